"""Where jobs run: ``local`` (the dispatcher in :mod:`gpudispatch.dispatcher`) or ``slurm``.

Backends share the folder protocol; a record's ``backend`` and ``backend_id`` say which
one owns a job in ``running/``. Each backend module is imported only when used, so the
local path never needs Slurm's tools.
"""

BACKENDS = ("local", "slurm")
