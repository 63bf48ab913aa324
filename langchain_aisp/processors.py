"""Moved to :mod:`langchain_aisp.engine.processors`; this import path stays for one release (0.2) and then goes.

It is the same module object, not a copy: patching ``langchain_aisp.processors.X`` patches the engine's ``X``.
"""

import sys
import warnings

import langchain_aisp.engine.processors as _moved

warnings.warn(
    "langchain_aisp.processors moved to langchain_aisp.engine.processors; the old path goes in 0.3",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
