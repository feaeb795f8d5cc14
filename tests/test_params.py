"""Parameter generators, grids and random search (pure)."""

from __future__ import annotations

import itertools
import math
import random
from functools import partial

import pytest

from gpudispatch.params import (
    choice,
    constant,
    create_params_generator,
    grid,
    int_uniform,
    log_uniform,
    q_uniform,
    random_search,
    random_uniform_exponential,
    uniform,
)


def test_seed_readme_example() -> None:
    defs = {"alpha": 0.5, "beta": [0.1, 0.2, 0.3], "gamma": random.random}
    out = list(create_params_generator(defs))
    assert [p["alpha"] for p in out] == [0.5, 0.5, 0.5]
    assert [p["beta"] for p in out] == [0.1, 0.2, 0.3]
    assert all(isinstance(p["gamma"], float) and 0 <= p["gamma"] < 1 for p in out)
    assert len({p["gamma"] for p in out}) == 3  # called afresh each time
    assert all(list(p) == ["alpha", "beta", "gamma"] for p in out)


def test_seed_readme_partial_and_lambda_with_n_max() -> None:
    rng = random.Random(1)
    defs = {
        "x": partial(rng.normalvariate, 0.0, 10.0),
        "P": partial(rng.gammavariate, 3.5, 2.0),
        "n": lambda: rng.randint(0, 10) + 1,
    }
    out = list(create_params_generator(defs, n_max=5))
    assert len(out) == 5
    assert all(isinstance(p["n"], int) and 1 <= p["n"] <= 11 for p in out)


@pytest.mark.parametrize(
    ("defs", "n_max", "expected"),
    [
        ({"a": [1, 2, 3], "b": (4, 5)}, None, [{"a": 1, "b": 4}, {"a": 2, "b": 5}]),
        ({"a": range(3)}, None, [{"a": 0}, {"a": 1}, {"a": 2}]),
        ({"a": range(10)}, 2, [{"a": 0}, {"a": 1}]),
        ({"s": "abc", "a": [1, 2]}, None, [{"s": "abc", "a": 1}, {"s": "abc", "a": 2}]),
        ({"d": {"k": 1}}, 2, [{"d": {"k": 1}}, {"d": {"k": 1}}]),
        ({"a": iter("xy")}, None, [{"a": "x"}, {"a": "y"}]),
        ({"a": []}, None, []),
        ({"a": 1}, 0, []),
        ({}, 2, [{}, {}]),
    ],
)
def test_generator_table(defs: dict, n_max: int | None, expected: list[dict]) -> None:
    assert list(create_params_generator(defs, n_max=n_max)) == expected


def test_only_fixed_and_callables_is_endless() -> None:
    counter = itertools.count()
    gen = create_params_generator({"a": 1, "i": lambda: next(counter)})
    first = list(itertools.islice(gen, 1000))
    assert [p["i"] for p in first] == list(range(1000))


def test_negative_n_max_rejected() -> None:
    with pytest.raises(ValueError, match="n_max"):
        create_params_generator({"a": 1}, n_max=-1)


class FakeArray:
    """Quacks like a 1-d numpy array (not a Sequence), so numpy stays optional."""

    ndim = 1

    def __iter__(self):
        return iter([10, 20])


def test_array_like_is_stepped() -> None:
    assert [p["a"] for p in create_params_generator({"a": FakeArray()})] == [10, 20]


@pytest.mark.parametrize(("low", "high", "base"), [(1e-5, 1e-1, 10), (1, 1024, 2), (0.5, 0.5, 10)])
def test_random_uniform_exponential_in_range_and_reproducible(low, high, base) -> None:
    draws = [random_uniform_exponential(low, high, base, random.Random(7)) for _ in range(2)]
    assert draws[0] == draws[1]
    many = [random_uniform_exponential(low, high, base, random.Random(i)) for i in range(500)]
    assert all(low <= x <= high for x in many)


def test_random_uniform_exponential_is_log_uniform() -> None:
    rng = random.Random(0)
    draws = [random_uniform_exponential(1e-4, 1, rng=rng) for _ in range(4000)]
    per_decade = [sum(10**-k <= x < 10 ** -(k - 1) for x in draws) for k in range(1, 5)]
    assert all(800 < n < 1200 for n in per_decade), per_decade


@pytest.mark.parametrize(("low", "high", "base"), [(0, 1, 10), (-1, 1, 10), (2, 1, 10),
                                                   (1, 2, 1), (1, 2, 0)])
def test_random_uniform_exponential_rejects(low, high, base) -> None:
    with pytest.raises(ValueError):
        random_uniform_exponential(low, high, base)


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ({"a": [1, 2], "b": ["x", "y"]},
         [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]),
        ({"a": [1, 2], "c": "fixed"}, [{"a": 1, "c": "fixed"}, {"a": 2, "c": "fixed"}]),
        ({"a": range(2), "b": []}, []),
        ({}, [{}]),
    ],
)
def test_grid(space: dict, expected: list[dict]) -> None:
    assert grid(space) == expected


SPACE = {
    "lr": log_uniform(1e-5, 1e-1),
    "dropout": uniform(0.0, 0.5),
    "layers": int_uniform(1, 3),
    "opt": choice(["sgd", "adam"]),
    "width": q_uniform(16, 256, 16),
    "fixed": 7,
    "listed": [1, 2],
    "const_list": constant([1, 2]),
}


def test_random_search_reproducible_and_in_range() -> None:
    a, b = random_search(SPACE, 200, seed=3), random_search(SPACE, 200, seed=3)
    assert a == b and len(a) == 200
    assert a != random_search(SPACE, 200, seed=4)
    assert all(1e-5 <= r["lr"] <= 1e-1 and 0 <= r["dropout"] <= 0.5 for r in a)
    assert {r["layers"] for r in a} == {1, 2, 3}  # inclusive of both ends
    assert {r["opt"] for r in a} == {"sgd", "adam"}
    assert all(isinstance(r["width"], int) and r["width"] % 16 == 0 for r in a)
    assert {r["fixed"] for r in a} == {7} and {r["listed"] for r in a} == {1, 2}
    assert all(r["const_list"] == [1, 2] for r in a)


def test_q_uniform_float_step() -> None:
    draws = [q_uniform(0.0, 1.0, 0.25).sample(random.Random(i)) for i in range(50)]
    assert all(math.isclose(x / 0.25, round(x / 0.25)) for x in draws)


def test_weighted_choice() -> None:
    rng = random.Random(0)
    draws = [choice(["a", "b"], [0.0, 1.0]).sample(rng) for _ in range(50)]
    assert set(draws) == {"b"}


def test_distributions_work_as_generator_callables() -> None:
    out = list(create_params_generator({"lr": log_uniform(1e-3, 1e-1)}, n_max=3))
    assert all(1e-3 <= p["lr"] <= 1e-1 for p in out)


@pytest.mark.parametrize(
    "make",
    [
        lambda: uniform(2, 1),
        lambda: log_uniform(0, 1),
        lambda: int_uniform(1.5, 3),
        lambda: int_uniform(3, 1),
        lambda: choice([]),
        lambda: choice([1, 2], [1.0]),
        lambda: q_uniform(0, 1, 0),
    ],
)
def test_bad_distributions(make) -> None:
    with pytest.raises(ValueError):
        make()


def test_the_package_names_load_on_first_use_and_submodules_stay_attributes() -> None:
    import subprocess
    import sys

    code = ("import sys, gpudispatch\n"
            "assert 'gpudispatch.sweep' not in sys.modules and 'yaml' not in sys.modules\n"
            "assert gpudispatch.create_params_generator and gpudispatch.sweep.build_sweep\n"
            "try:\n    gpudispatch.no_such_name\nexcept AttributeError:\n    pass\n"
            "else:\n    raise SystemExit('no AttributeError')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
