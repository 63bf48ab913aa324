"""Serving: an OpenAI-compatible HTTP server with cross-request Batched AISP, and Ray Serve / Ray Data surfaces.

* ``langchain-aisp serve`` (:mod:`langchain_aisp.serve.cli`) runs :func:`create_app` under uvicorn;
* :mod:`langchain_aisp.serve.ray` deploys the same app on Ray Serve and aligns Ray Data datasets
  (``align_dataset``).

Needs the ``serve`` extra (FastAPI, uvicorn) and, for Ray, the ``ray`` extra. Importing this
package imports neither: the names below load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langchain_aisp.serve.app import create_app
    from langchain_aisp.serve.config import ServeConfig
    from langchain_aisp.serve.service import AlignmentService

_EXPORTS = {
    "create_app": "langchain_aisp.serve.app",
    "ServeConfig": "langchain_aisp.serve.config",
    "AlignmentService": "langchain_aisp.serve.service",
}

__all__ = ["AlignmentService", "ServeConfig", "create_app"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'langchain_aisp.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
