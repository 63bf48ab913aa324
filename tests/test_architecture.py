"""The engine is plain torch: importing it pulls in no LangChain, HTTP, Ray or grammar library."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_ENGINE_FILES = (p for p in (ROOT / "langchain_aisp" / "engine").rglob("*.py") if p.name != "__init__.py")
ENGINE = [*sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in _ENGINE_FILES), "langchain_aisp.errors"]
SURFACES = ("langchain_core", "langchain", "langgraph", "fastapi", "starlette", "uvicorn", "ray", "llguidance")


@pytest.mark.parametrize("module", ENGINE)
def test_engine_module_imports_no_surface(module):
    code = (
        f"import json, sys; import {module}; "
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(SURFACES)!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [], f"{module} imports a surface"


def test_the_check_sees_a_surface():
    """The same probe on the chat model (a surface) does find langchain_core: the check can fail."""
    code = "import json, sys; import langchain_aisp.chat_models; print(json.dumps('langchain_core' in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert json.loads(out.stdout.strip().splitlines()[-1]) is True


def test_every_engine_module_is_checked():
    """The list is discovered from the folder, so a new engine module is covered without editing this file."""
    assert {"langchain_aisp.engine.aisp", "langchain_aisp.engine.decode.static", "langchain_aisp.engine.memory"} <= set(
        ENGINE
    )
