"""The GPU check script (scripts/gpu_check.py) in its dry-run mode: every issue-20 stage runs on the tiny
shape on CPU and lands in report.json, so the script a GPU session runs cannot rot unnoticed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_dry_run_completes_every_stage(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env["LANGCHAIN_AISP_COMPILE_CACHE"] = str(tmp_path / "compile")
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--out", str(out), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    assert all(s["status"] == "ok" for s in report["stages"]), [(s["name"], s.get("error")) for s in stages.values()]
    kinds = {name.split(":")[0] for name in stages}
    assert kinds == {"env", "build", "warmup", "default", "firstcall", "hostmask", "logits", "serve"}
    first = stages["firstcall:tiny:2"]["result"]
    assert first["resolved"] == "eager" and first["first_call_s"] > 0  # CPU: auto is the eager path
    for dtype in ("bfloat16", "float16"):
        shift = stages[f"logits:{dtype}:tiny"]["result"]
        assert shift["static"]["ok"] and shift["static"]["rel_l2"] < shift["naive"]["rel_l2"]  # the fp32 control
    assert stages["hostmask:tiny:2"]["result"]["same_tokens"]
    assert [c["method"] for c in stages["serve:tiny:2"]["result"]] == ["aisp", "bon"]
    warmed = [b for s in report["stages"] if s["name"].startswith("warmup:") for b in s["result"]]
    assert [b["path"] for b in warmed] == ["static"] * len(warmed) and len(warmed) >= 3  # a dry run never compiles
    markdown = (out / "report.md").read_text()
    assert "## Default path" in markdown and "logit shift vs fp32 reference" in markdown
