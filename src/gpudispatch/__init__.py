"""gpudispatch: drop shell scripts into a folder; each runs on a free GPU."""

from gpudispatch.job import Directives, JobRecord, JobState, parse_directives
from gpudispatch.layout import Layout
from gpudispatch.store import FolderQueue, QueueError

__version__ = "0.1.0"

__all__ = [
    "Directives",
    "FolderQueue",
    "JobRecord",
    "JobState",
    "Layout",
    "QueueError",
    "parse_directives",
]
