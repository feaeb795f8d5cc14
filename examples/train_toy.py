"""A toy 'training' program for examples/sweep.yaml: no GPU, no dependencies.

It fits y = 3x by gradient descent and reports its metrics the gpudispatch way: one JSON
object per epoch, appended as a line to the file named in $GPUDISPATCH_METRICS (skipped
when it is not set). ``gpudispatch.log(step=..., **metrics)`` does the same; this file
does it by hand to show the format and to need nothing installed.
"""

from __future__ import annotations

import argparse
import json
import os
import random


def log(step: int, metrics: dict[str, float]) -> None:
    """One line per call, written at once with O_APPEND (what gpudispatch.log does)."""
    path = os.environ.get("GPUDISPATCH_METRICS")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps({"step": step, **metrics}) + "\n").encode())
        finally:
            os.close(fd)


def train(lr: float, batch_size: int, epochs: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    data = [(x, 3 * x + rng.gauss(0, 0.1)) for x in (rng.uniform(-1, 1) for _ in range(256))]
    w = 0.0
    metrics: dict[str, float] = {}
    for epoch in range(1, epochs + 1):
        for i in range(0, len(data), batch_size):
            batch = data[i:i + batch_size]
            grad = sum(2 * (w * x - y) * x for x, y in batch) / len(batch)
            w -= lr * grad
        metrics = {"val_loss": sum((w * x - y) ** 2 for x, y in data) / len(data), "weight": w}
        log(epoch, metrics)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(train(args.lr, args.batch_size, args.epochs, args.seed)))


if __name__ == "__main__":
    main()
