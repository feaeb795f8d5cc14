"""The local dispatcher, in small owners (see docs/DESIGN.md):

- ``loop``: ``Dispatcher.tick(now)`` as a list of named steps, and ``run()``;
- ``intake``: discovery, completeness and run order of queued files;
- ``running``: ``RunningJob`` and its explicit phases;
- ``starting``: the check, record and spawn request of a start (no side effects);
- ``handover``: which queued job follows which running one (pure);
- ``bookkeeping``: the writer thread (records and moves of ended jobs);
- ``recovery``: jobs left in ``running/`` by dispatchers that are gone;
- ``hooks``: the ``--on-finish`` command.
"""

from gpudispatch.dispatcher.loop import Dispatcher, DispatcherOptions, Launcher, queue_logger

__all__ = ["Dispatcher", "DispatcherOptions", "Launcher", "queue_logger"]
