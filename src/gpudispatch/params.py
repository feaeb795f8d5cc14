"""Parameter sets for experiments: the seed's generator, grids, and random search.

Nothing here imports numpy: numpy callables (``np.random.rand``) and Generators work
because only ``callable(...)`` and ``rng.uniform(a, b)`` are used, but numpy stays optional.
"""

from __future__ import annotations

import itertools
import math
import operator
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, overload

T = TypeVar("T")


class UniformSource(Protocol):
    """Anything with ``uniform(a, b)``: the ``random`` module, ``random.Random``, numpy's
    ``Generator`` or ``RandomState``."""

    def uniform(self, a: float, b: float) -> float: ...


def is_stepped(value: Any) -> bool:
    """Whether a definition is stepped through (a sequence or iterator), not a fixed value.

    Strings and bytes are sequences to Python but single values to a user; numpy arrays
    are not ``Sequence`` subclasses, so one-or-more-dimensional arrays are recognised by
    their ``ndim``.
    """
    if isinstance(value, (str, bytes, bytearray, Mapping)):
        return False
    if isinstance(value, (Sequence, Iterator)):
        return True
    return getattr(value, "ndim", 0) >= 1


def create_params_generator(
    definitions: Mapping[str, Any], n_max: int | None = None
) -> Iterator[dict[str, Any]]:
    """Yield parameter dicts (keys in definition order) built from ``definitions``.

    Each definition is one of: a sequence (list, tuple, range, 1-d array) or iterator,
    stepped through together with the others and stopping at the shortest; a callable,
    called afresh for every dict (``random.random``, ``functools.partial(...)``); or any
    other value, repeated as is. With no sequences the generator is endless, so pass
    ``n_max`` (at most that many dicts are yielded in any case).
    """
    if n_max is not None and n_max < 0:
        raise ValueError(f"n_max must be 0 or more, not {n_max}")  # now, not at first next()
    stepped = {k: iter(v) for k, v in definitions.items() if is_stepped(v)}
    return _generate(dict(definitions), stepped, n_max)


def _generate(
    definitions: dict[str, Any], stepped: dict[str, Iterator[Any]], n_max: int | None
) -> Iterator[dict[str, Any]]:
    count = itertools.count() if n_max is None else range(n_max)
    for _ in count:
        params: dict[str, Any] = {}
        for key, value in definitions.items():
            if key in stepped:
                try:
                    params[key] = next(stepped[key])
                except StopIteration:
                    return
            elif callable(value):
                params[key] = value()
            else:
                params[key] = value
        yield params


def random_uniform_exponential(
    low: float, high: float, log_base: float = 10, rng: UniformSource | None = None
) -> float:
    """A log-uniform draw between ``low`` and ``high``: each decade is equally likely.

    Learning rates and weight decays span orders of magnitude, so sampling their exponent
    uniformly covers small values as well as large ones. ``rng`` is a ``random.Random``
    or numpy Generator for reproducible draws; by default the ``random`` module is used.
    """
    if low <= 0 or high <= 0:
        raise ValueError(f"low and high must be positive, not {low} and {high}")
    if low > high:
        raise ValueError(f"low ({low}) must not exceed high ({high})")
    if log_base <= 0 or log_base == 1:
        raise ValueError(f"log_base must be positive and not 1, not {log_base}")
    source = random if rng is None else rng
    exponent = source.uniform(math.log(low, log_base), math.log(high, log_base))
    # Rounding in log/pow can step just outside the range; keep the promise.
    return min(max(float(log_base) ** float(exponent), low), high)


# --- grids and random search --------------------------------------------------------------


def as_sequence(value: Any) -> Sequence[Any]:
    """A stepped definition as something with ``len`` and indexing, copied only when it
    has neither (an iterator): a ``range`` or numpy array stays as it is, not a list."""
    if hasattr(value, "__len__") and hasattr(value, "__getitem__"):
        return value
    return list(value)


def _length(axis: Sequence[Any]) -> int:
    """``len(axis)``, also for a range longer than ``sys.maxsize``."""
    if isinstance(axis, range):
        return max(0, (axis.stop - axis.start + axis.step - (1 if axis.step > 0 else -1))
                   // axis.step)
    return len(axis)


class LazySequence(Sequence[T]):
    """``count`` items made one at a time by ``make()`` (a fresh iterator on every pass).

    Its length is known without making anything, so a sweep of 10**9 runs can be counted
    (and refused) in no time and memory; item ``i`` costs making the ``i`` before it, so
    indexing is meant for the first few.
    """

    def __init__(self, count: int, make: Callable[[], Iterable[T]]) -> None:
        self.count = count
        self._make = make

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[T]:
        return itertools.islice(self._make(), self.count)

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self.count)
            if step < 0:
                return list(self)[index]
            return list(itertools.islice(iter(self), start, stop, step))
        i = operator.index(index)
        if i < 0:
            i += self.count
        if not 0 <= i < self.count:
            raise IndexError("index out of range")
        return next(itertools.islice(iter(self), i, None))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self.count}>"


class Grid(Sequence[dict[str, Any]]):
    """Every combination of the values in ``space``, in insertion order, last key fastest,
    made one at a time.

    A sequence gives the options for its key; any other value is fixed (a one-option axis).
    An empty sequence therefore gives no combinations at all. ``len`` is the product of
    the axis lengths and item ``i`` is read off in mixed radix: nothing is materialised
    (``itertools.product`` would first copy every axis into a tuple, 8 GB for
    ``range(10**9)``).
    """

    def __init__(self, space: Mapping[str, Any]) -> None:
        self.keys = list(space)
        self.axes = [as_sequence(v) if is_stepped(v) else (v,) for v in space.values()]

    @property
    def size(self) -> int:
        """How many combinations; unlike ``len()``, also past ``sys.maxsize``."""
        return math.prod(_length(axis) for axis in self.axes)

    def __len__(self) -> int:
        return self.size  # OverflowError past sys.maxsize, as for a range

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        size = self.size
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(size))]
        i = operator.index(index)
        if i < 0:
            i += size
        if not 0 <= i < size:
            raise IndexError("grid index out of range")
        values = []
        for axis in reversed(self.axes):
            i, digit = divmod(i, _length(axis))
            values.append(axis[digit])
        return dict(zip(self.keys, reversed(values), strict=True))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        axes = self.axes
        lengths = [_length(axis) for axis in axes]
        if not all(lengths):
            return
        digits = [0] * len(axes)
        current = [axis[0] for axis in axes]
        while True:
            yield dict(zip(self.keys, current, strict=True))
            k = len(axes) - 1  # an odometer: step the last axis, carry leftwards
            while k >= 0:
                digits[k] += 1
                if digits[k] < lengths[k]:
                    current[k] = axes[k][digits[k]]
                    break
                digits[k] = 0
                current[k] = axes[k][0]
                k -= 1
            else:
                return


def grid(space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the values in ``space`` as a list (see :class:`Grid`, which
    makes them one at a time)."""
    return list(Grid(space))


class Distribution:
    """A random parameter: ``sample(rng)`` draws one value; calling it uses ``random``.

    Being callable, a distribution also serves as a definition for
    :func:`create_params_generator`.
    """

    def sample(self, rng: random.Random) -> Any:
        raise NotImplementedError

    def __call__(self) -> Any:
        return self.sample(random)  # type: ignore[arg-type]  # the module has the methods


def _check_range(lo: float, hi: float) -> None:
    if not lo <= hi:
        raise ValueError(f"min ({lo}) must not exceed max ({hi})")


@dataclass(frozen=True)
class constant(Distribution):  # lower case: reads like the W&B name
    """Always ``value`` (even a list, which a plain list in a space would not be)."""

    value: Any

    def sample(self, rng: random.Random) -> Any:
        return self.value


@dataclass(frozen=True)
class uniform(Distribution):
    """A float drawn uniformly from ``[lo, hi]``."""

    lo: float
    hi: float

    def __post_init__(self) -> None:
        _check_range(self.lo, self.hi)

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.lo, self.hi)


@dataclass(frozen=True)
class log_uniform(Distribution):
    """A float whose logarithm is uniform over ``[log lo, log hi]`` (both positive)."""

    lo: float
    hi: float

    def __post_init__(self) -> None:
        if self.lo <= 0 or self.hi <= 0:
            raise ValueError(f"log_uniform needs positive bounds, not {self.lo} and {self.hi}")
        _check_range(self.lo, self.hi)

    def sample(self, rng: random.Random) -> float:
        return random_uniform_exponential(self.lo, self.hi, math.e, rng)


@dataclass(frozen=True)
class int_uniform(Distribution):
    """An integer drawn uniformly from ``lo..hi``, both included."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (self.lo, self.hi)):
            raise ValueError(f"int_uniform needs integer bounds, not {self.lo!r}, {self.hi!r}")
        _check_range(self.lo, self.hi)

    def sample(self, rng: random.Random) -> int:
        return rng.randint(self.lo, self.hi)


@dataclass(frozen=True)
class choice(Distribution):
    """One of ``values``, each equally likely unless ``weights`` are given."""

    values: tuple[Any, ...]
    weights: tuple[float, ...] | None = None

    def __init__(self, values: Sequence[Any], weights: Sequence[float] | None = None) -> None:
        object.__setattr__(self, "values", tuple(values))
        object.__setattr__(self, "weights", None if weights is None else tuple(weights))
        if not self.values:
            raise ValueError("choice needs at least one value")
        if self.weights is not None and len(self.weights) != len(self.values):
            raise ValueError(
                f"choice has {len(self.values)} values but {len(self.weights)} weights"
            )

    def sample(self, rng: random.Random) -> Any:
        if self.weights is None:
            return rng.choice(self.values)
        return rng.choices(self.values, weights=self.weights)[0]


@dataclass(frozen=True)
class q_uniform(Distribution):
    """``round(uniform(lo, hi) / q) * q``: a uniform draw on a grid of step ``q`` (W&B's
    definition); an int when ``lo``, ``hi`` and ``q`` are all ints."""

    lo: float
    hi: float
    q: float = 1

    def __post_init__(self) -> None:
        _check_range(self.lo, self.hi)
        if self.q <= 0:
            raise ValueError(f"q must be positive, not {self.q}")

    def sample(self, rng: random.Random) -> float:
        value = round(rng.uniform(self.lo, self.hi) / self.q) * self.q
        if all(isinstance(v, int) for v in (self.lo, self.hi, self.q)):
            return int(value)
        return value


def sample_value(definition: Any, rng: random.Random) -> Any:
    """One draw for one key: distributions sample, sequences are a uniform choice, plain
    callables are called, anything else is fixed."""
    if isinstance(definition, Distribution):
        return definition.sample(rng)
    if is_stepped(definition):
        return rng.choice(as_sequence(definition))  # a range(10**9) is not copied
    if callable(definition):
        return definition()
    return definition


def iter_random_search(
    space: Mapping[str, Any], n: int, seed: int | None = None
) -> Iterator[dict[str, Any]]:
    """:func:`random_search`, one dict at a time (the same dicts for the same ``seed``)."""
    if n < 0:
        raise ValueError(f"n must be 0 or more, not {n}")  # now, not at the first next()
    # An iterator is drawn from many times: copy it once, not at every draw.
    space = {k: as_sequence(v) if is_stepped(v) else v for k, v in space.items()}
    rng = random.Random(seed)
    return ({key: sample_value(d, rng) for key, d in space.items()} for _ in range(n))


def random_search(
    space: Mapping[str, Any], n: int, seed: int | None = None
) -> list[dict[str, Any]]:
    """``n`` random parameter dicts from ``space``; the same ``seed`` gives the same list.

    Keys are sampled in insertion order from one ``random.Random(seed)``. Plain callables
    in ``space`` use their own randomness and are not covered by ``seed``.
    """
    return list(iter_random_search(space, n, seed))


# --- the rest of W&B's distributions ------------------------------------------------------
# Each samples as W&B's ``sweeps`` package does (its ``HyperParameter.ppf``), from the
# standard library's ``random.Random`` instead of numpy/scipy.


def _check_spread(name: str, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{name} must be 0 or more, not {value}")


@dataclass(frozen=True)
class normal(Distribution):
    """A float from the normal distribution of mean ``mu`` and standard deviation
    ``sigma`` (W&B's ``normal``)."""

    mu: float = 0.0
    sigma: float = 1.0

    def __post_init__(self) -> None:
        _check_spread("sigma", self.sigma)

    def sample(self, rng: random.Random) -> float:
        return rng.normalvariate(self.mu, self.sigma)


@dataclass(frozen=True)
class log_normal(Distribution):
    """``exp(normal(mu, sigma))`` (W&B's ``log_normal``: scipy's ``lognorm(s=sigma,
    scale=exp(mu))``)."""

    mu: float = 0.0
    sigma: float = 1.0

    def __post_init__(self) -> None:
        _check_spread("sigma", self.sigma)

    def sample(self, rng: random.Random) -> float:
        return rng.lognormvariate(self.mu, self.sigma)


@dataclass(frozen=True)
class beta(Distribution):
    """A float in ``[0, 1]`` from the beta distribution with shapes ``a`` and ``b``."""

    a: float = 1.0
    b: float = 1.0

    def __post_init__(self) -> None:
        if not (self.a > 0 and self.b > 0):
            raise ValueError(f"beta needs a and b above 0, not {self.a} and {self.b}")

    def sample(self, rng: random.Random) -> float:
        return rng.betavariate(self.a, self.b)


@dataclass(frozen=True)
class exp_uniform(Distribution):
    """``exp(u)`` for ``u`` uniform in ``[lo, hi]``, or ``exp(-u)`` with ``negate``:
    W&B's ``log_uniform`` and ``inv_log_uniform``, whose ``min``/``max`` are these
    natural-log exponents (the ``..._values`` forms take logs of their bounds first)."""

    lo: float
    hi: float
    negate: bool = False

    def __post_init__(self) -> None:
        _check_range(self.lo, self.hi)

    def sample(self, rng: random.Random) -> float:
        u = rng.uniform(self.lo, self.hi)
        return math.exp(-u if self.negate else u)


@dataclass(frozen=True)
class quantized(Distribution):
    """``round(base / q) * q`` (W&B's ``q_...`` distributions, numpy's round half to
    even, as Python's): an int when ``q`` is an int, as W&B does, else a float."""

    base: Distribution
    q: float = 1.0

    def __post_init__(self) -> None:
        if not self.q > 0:
            raise ValueError(f"q must be above 0, not {self.q}")

    def sample(self, rng: random.Random) -> float:
        value = round(self.base.sample(rng) / self.q) * self.q
        if isinstance(self.q, int) and not isinstance(self.q, bool):
            return int(value)
        return float(value)


def q_grid(lo: float, hi: float, q: float) -> list[Any]:
    """The values W&B's grid steps through for ``q_uniform``: ``numpy.arange(lo, hi, q)``
    (``hi`` left out), ints when all three are ints."""
    if not q > 0:
        raise ValueError(f"q must be above 0, not {q}")
    count = max(0, math.ceil((hi - lo) / q))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi, q)):
        return list(range(lo, hi, q))
    step = (lo + q) - lo  # numpy fills start + i * (second - first)
    return [float(lo + i * step) for i in range(count)]
