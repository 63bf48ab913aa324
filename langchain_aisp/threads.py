"""Moved to :mod:`langchain_aisp.engine.threads`; this import path stays for one release (0.2) and then goes.

It is the same module object, not a copy: patching ``langchain_aisp.threads.X`` patches the engine's ``X``.
"""

import sys
import warnings

import langchain_aisp.engine.threads as _moved

warnings.warn(
    "langchain_aisp.threads moved to langchain_aisp.engine.threads; the old path goes in 0.3",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
