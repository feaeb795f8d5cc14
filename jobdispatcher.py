#!/usr/bin/env python3
"""The seed's entry point, kept by name: ``python jobdispatcher.py --gpu 0``.

Same flags, folders and log lines as before; the engine is gpudispatch's
(``jobdispatcher`` after ``pip install .`` is the same command).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from gpudispatch.seed import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
