"""Test-wide setup.

``TRITON_INTERPRET=1`` must be set before any ``@triton.jit`` runs, so the Triton kernels execute
on CPU tensors in the interpreter (that is how CI checks them).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
