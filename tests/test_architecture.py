"""The engine is plain torch: importing it pulls in no LangChain, HTTP, Ray or grammar library."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

ENGINE = ("config", "lm", "processors", "constraints", "decoding", "static_decoding", "aisp", "memory", "default_model")
SURFACES = ("langchain_core", "langchain", "langgraph", "fastapi", "starlette", "uvicorn", "ray", "llguidance")


@pytest.mark.parametrize("module", ENGINE)
def test_engine_module_imports_no_surface(module):
    code = (
        f"import json, sys; import langchain_aisp.{module}; "
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(SURFACES)!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [], f"langchain_aisp.{module} imports a surface"


def test_the_check_sees_a_surface():
    """The same probe on the chat model (a surface) does find langchain_core: the check can fail."""
    code = "import json, sys; import langchain_aisp.chat_models; print(json.dumps('langchain_core' in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert json.loads(out.stdout.strip().splitlines()[-1]) is True
