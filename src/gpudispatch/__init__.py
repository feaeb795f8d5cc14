"""gpudispatch: drop shell scripts into a folder; each runs on a free GPU."""

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
from gpudispatch.results import METRICS_ENV, result_rows, rows_to_csv, sort_rows, write_metrics
from gpudispatch.scripts import create_shell_script
from gpudispatch.store import FolderQueue, QueueError
from gpudispatch.sweep import Sweep, SweepError, SweepJob, build_sweep, queue_sweep

__version__ = "0.1.0"

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
