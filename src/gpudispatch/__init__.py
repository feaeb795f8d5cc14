"""gpudispatch: drop shell scripts into a folder; each runs on a free GPU.

The names below are imported when first used (PEP 562): ``gpudispatch status`` and
``submit`` need none of the sweep, parameter and results code, nor YAML, and a job's
``from gpudispatch import log`` loads one small module.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # (typing's own costs every start a few ms)
if TYPE_CHECKING:
    from typing import Any

__version__ = "0.1.0"

_WHERE = {
    "Directives": "job", "JobRecord": "job", "JobState": "job", "parse_directives": "job",
    "Layout": "layout",
    "choice": "params", "constant": "params", "create_params_generator": "params",
    "grid": "params", "int_uniform": "params", "log_uniform": "params",
    "q_uniform": "params", "random_search": "params",
    "random_uniform_exponential": "params", "uniform": "params",
    "METRICS_ENV": "track", "log": "track",
    "result_rows": "results", "rows_to_csv": "results", "sort_rows": "results",
    "write_metrics": "results",
    "create_shell_script": "scripts",
    "FolderQueue": "store", "QueueError": "store",
    "Sweep": "sweep", "SweepError": "sweep", "SweepJob": "sweep", "build_sweep": "sweep",
    "queue_sweep": "sweep",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:  # a submodule (``gpudispatch.sweep``), as before names were lazy
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
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


if TYPE_CHECKING:  # for type checkers and editors: the same names, eagerly
    from gpudispatch.job import Directives, JobRecord, JobState, parse_directives  # noqa: F401
    from gpudispatch.layout import Layout  # noqa: F401
    from gpudispatch.params import (  # noqa: F401
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
    from gpudispatch.results import (  # noqa: F401
        result_rows,
        rows_to_csv,
        sort_rows,
        write_metrics,
    )
    from gpudispatch.scripts import create_shell_script  # noqa: F401
    from gpudispatch.store import FolderQueue, QueueError  # noqa: F401
    from gpudispatch.sweep import Sweep, SweepError, SweepJob, build_sweep, queue_sweep  # noqa: F401
    from gpudispatch.track import METRICS_ENV, log  # noqa: F401
