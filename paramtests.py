"""The seed's ``from paramtests import create_params_generator``, kept by name."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from gpudispatch.params import (  # noqa: E402
    create_params_generator,
    random_uniform_exponential,
)

__all__ = ["create_params_generator", "random_uniform_exponential"]
