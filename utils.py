"""The seed's ``from utils import create_shell_script``, kept by name."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from gpudispatch.scripts import create_shell_script  # noqa: E402

__all__ = ["create_shell_script"]
