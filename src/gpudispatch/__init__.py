"""gpudispatch: drop shell scripts into a folder; each runs on a free GPU.

The public names below are loaded on first use (PEP 562), not at import: every
``gpudispatch VERB`` imports this package first, and ``submit`` or ``status`` must not
pay for YAML, sweeps and results they never use.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (CLI start)

__version__ = "0.1.0"

# public name -> the module that defines it
_WHERE = {
    "Directives": "job",
    "JobRecord": "job",
    "JobState": "job",
    "parse_directives": "job",
    "Layout": "layout",
    "choice": "params",
    "constant": "params",
    "create_params_generator": "params",
    "grid": "params",
    "int_uniform": "params",
    "log_uniform": "params",
    "q_uniform": "params",
    "random_search": "params",
    "random_uniform_exponential": "params",
    "uniform": "params",
    "METRICS_ENV": "results",
    "result_rows": "results",
    "rows_to_csv": "results",
    "sort_rows": "results",
    "write_metrics": "results",
    "create_shell_script": "scripts",
    "FolderQueue": "store",
    "QueueError": "store",
    "Sweep": "sweep",
    "SweepError": "sweep",
    "SweepJob": "sweep",
    "build_sweep": "sweep",
    "queue_sweep": "sweep",
}

__all__ = [
    "METRICS_ENV",
    "Directives",
    "FolderQueue",
    "JobRecord",
    "JobState",
    "Layout",
    "QueueError",
    "Sweep",
    "SweepError",
    "SweepJob",
    "build_sweep",
    "choice",
    "constant",
    "create_params_generator",
    "create_shell_script",
    "grid",
    "int_uniform",
    "log_uniform",
    "parse_directives",
    "q_uniform",
    "queue_sweep",
    "random_search",
    "random_uniform_exponential",
    "result_rows",
    "rows_to_csv",
    "sort_rows",
    "uniform",
    "write_metrics",
]


def __getattr__(name: str) -> object:
    """Import the module defining ``name`` the first time it is asked for; a submodule
    (``gpudispatch.sweep``) is imported too, as the eager package once did."""
    module = _WHERE.get(name)
    if module is None:
        if not name.isidentifier() or name.startswith("__"):
            raise AttributeError(f"module 'gpudispatch' has no attribute {name!r}")
        try:
            __import__(f"gpudispatch.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"gpudispatch.{name}":
                raise
            raise AttributeError(f"module 'gpudispatch' has no attribute {name!r}") from None
        return sys.modules[f"gpudispatch.{name}"]
    __import__(f"gpudispatch.{module}")
    value = getattr(sys.modules[f"gpudispatch.{module}"], name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


if TYPE_CHECKING:  # for type checkers and editors: the names as if imported eagerly
    from gpudispatch.job import Directives, JobRecord, JobState, parse_directives
    from gpudispatch.layout import Layout
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
    from gpudispatch.results import (
        METRICS_ENV,
        result_rows,
        rows_to_csv,
        sort_rows,
        write_metrics,
    )
    from gpudispatch.scripts import create_shell_script
    from gpudispatch.store import FolderQueue, QueueError
    from gpudispatch.sweep import Sweep, SweepError, SweepJob, build_sweep, queue_sweep
