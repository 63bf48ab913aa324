"""``langchain-aisp serve`` as a user runs it: a subprocess, real signals (issue 10).

Graceful shutdown: SIGTERM while a request runs; the request is answered in full, then the process exits 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.model


def _spawn(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    return subprocess.Popen(
        [sys.executable, "-m", "langchain_aisp.serve", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_port(process: subprocess.Popen[str], lines: list[str]) -> int:
    deadline = time.monotonic() + 120
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
        if found:
            return int(found.group(1))
    process.kill()
    raise AssertionError("the server did not start:\n" + "".join(lines))


def test_cli_rejects_bad_reward_specs_before_loading_anything():
    out = subprocess.run(
        [sys.executable, "-m", "langchain_aisp.serve", "serve", "--reward", "no-equals-sign"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "a reward must be given as NAME=module:callable" in out.stderr


def test_cli_fails_fast_on_a_reward_that_does_not_import():
    process = _spawn("serve", "--port", "0", "--reward", "mine=no_such_module:score")
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 2  # imported with the arguments (--app-dir), before the model loads
    assert "reward 'mine' ('no_such_module:score') cannot be served" in output
    assert f"no module named 'no_such_module' in the app dir {str(ROOT)!r}" in output


def test_cli_serves_and_sigterm_finishes_the_request_in_flight():
    process = _spawn(
        "serve",
        "--port",
        "0",
        "--reward",
        "slow=serve_rewards:slow_overlap",
        "--reward",
        "overlap=serve_rewards:overlap",
        "--num-samples",
        "2",
        "--num-iterations",
        "3",
        "--max-tokens",
        "8",
        "--api-key",
        "k",
    )
    lines: list[str] = []
    try:
        port = _wait_for_port(process, lines)
        url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": "Bearer k"}
        assert httpx.get(f"{url}/v1/models", headers=headers).json()["data"][0]["aisp"]["default_reward"] == "slow"
        body = {"model": "default", "messages": [{"role": "user", "content": "Name a fruit."}]}
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(httpx.post, f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120)
            deadline = time.monotonic() + 60
            while "aisp_queue_depth 1" not in httpx.get(f"{url}/metrics", headers=headers).text:
                assert time.monotonic() < deadline, "the request was never admitted"
                time.sleep(0.02)
            process.send_signal(signal.SIGTERM)  # while the request runs
            answer = future.result(120)
        assert answer.status_code == 200, answer.text
        data = answer.json()
        assert data["aisp"]["iterations"] == 3 and data["aisp"]["reward_name"] == "slow"  # answered in full
        output, _ = process.communicate(timeout=120)
        # uvicorn re-raises the signal after its graceful shutdown: the exit status says "ended by SIGTERM".
        assert process.returncode in (0, -signal.SIGTERM), "".join(lines) + output
        assert "Application shutdown complete" in output and "Finished server process" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert json.dumps(data)  # the answer is plain JSON
