"""A toy 'training' program for examples/sweep.yaml: no GPU, no dependencies.

It fits y = 3x by gradient descent and reports its metrics the gpudispatch way: one JSON
object written to the file named in $GPUDISPATCH_METRICS (skipped when it is not set).
"""

from __future__ import annotations

import argparse
import json
import os
import random


def train(lr: float, batch_size: int, epochs: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    data = [(x, 3 * x + rng.gauss(0, 0.1)) for x in (rng.uniform(-1, 1) for _ in range(256))]
    w = 0.0
    for _ in range(epochs):
        for i in range(0, len(data), batch_size):
            batch = data[i:i + batch_size]
            grad = sum(2 * (w * x - y) * x for x, y in batch) / len(batch)
            w -= lr * grad
    val_loss = sum((w * x - y) ** 2 for x, y in data) / len(data)
    return {"val_loss": val_loss, "weight": w}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    metrics = train(args.lr, args.batch_size, args.epochs, args.seed)
    print(json.dumps(metrics))
    path = os.environ.get("GPUDISPATCH_METRICS")
    if path:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(metrics, f)
        os.replace(tmp, path)  # atomic: a reader never sees half a file


if __name__ == "__main__":
    main()
