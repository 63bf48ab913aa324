"""Import an object from a ``module:qualname`` path: the one importer of the chat model, the server and the bench.

Plain Python (no model, no LangChain). ``module`` is a dotted module name, or a ``.py`` file path
(``./my_rewards.py:concise``, loaded as module ``_aisp_user_<stem>``). ``app_dir`` works as
uvicorn's ``--app-dir``: the folder is put first on ``sys.path`` (once, for the process) before
importing, so ``langchain-aisp serve --reward concise=myrewards:concise`` started in the folder that
holds ``myrewards.py`` finds it. A module that is not found raises an ImportError naming the folder
searched.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any


def split_path(path: str) -> tuple[str, str]:
    """``"module:qualname"`` -> ``(module, qualname)``; ValueError naming the expected form otherwise."""
    if not isinstance(path, str):
        raise ValueError(f"expected a 'package.module:qualname' string, got {path!r} ({type(path).__name__})")
    module, sep, qualname = path.rpartition(":")
    if not sep or not module.strip() or not qualname.strip():
        raise ValueError(f"expected 'package.module:qualname' (or 'path/to/file.py:qualname'), got {path!r}")
    return module.strip(), qualname.strip()


def _is_file(module: str) -> bool:
    return module.endswith(".py") or "/" in module or "\\" in module


def _from_file(module: str, app_dir: Path | None) -> ModuleType:
    path = Path(module).expanduser()
    path = (app_dir / path if app_dir is not None and not path.is_absolute() else path).resolve()
    if not path.is_file():
        raise ImportError(f"module file {str(path)!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"_aisp_user_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import module file {str(path)!r}")
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loaded
    spec.loader.exec_module(loaded)
    return loaded


def _module(module: str, app_dir: Path | None) -> ModuleType:
    if app_dir is not None and str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))  # as uvicorn --app-dir: first on the path, for the process
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
            raise  # the module exists but one of its own imports is missing: its message says which
        where = (
            f"in the app dir {str(app_dir)!r} or on sys.path"
            if app_dir is not None
            else f"on sys.path (the working folder {os.getcwd()!r} is not searched: pass an app dir or set PYTHONPATH)"
        )
        raise ImportError(f"no module named {exc.name!r} {where}", name=exc.name) from exc


def import_object(path: str, *, app_dir: str | os.PathLike[str] | None = None) -> Any:
    """The object at ``path`` (``module:qualname``, ``qualname`` may be dotted).

    ``app_dir``: a folder searched first (see the module docstring); None searches ``sys.path`` only.
    Raises ValueError (malformed path), ImportError (no such module, naming the folder searched) or
    AttributeError (no such attribute).
    """
    module_name, qualname = split_path(path)
    folder = Path(app_dir).expanduser().resolve() if app_dir is not None else None
    if folder is not None and not folder.is_dir():
        raise ImportError(f"the app dir {str(folder)!r} is not a folder")
    obj: Any = _from_file(module_name, folder) if _is_file(module_name) else _module(module_name, folder)
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise AttributeError(f"module {module_name!r} has no attribute {qualname!r}")
        obj = getattr(obj, part)
    return obj
