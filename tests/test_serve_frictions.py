"""Server frictions a new user met (issue 19 §4): --app-dir, response headers, the aisp object on the final
stream chunk, and --help without duplicated defaults. In-process app on the tiny random Llama."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
from fastapi.testclient import TestClient  # noqa: E402

from langchain_aisp.serve import AlignmentService, create_app  # noqa: E402
from langchain_aisp.serve.cli import _parser, config_from_args  # noqa: E402
from langchain_aisp.serve.config import ServeConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
REWARD_SOURCE = "def concise(prompt, response):\n    return -float(len(response))\n"


def _serve_args(*args: str):
    return _parser().parse_args(["serve", *args])


def test_help_prints_each_default_once(capsys):
    with pytest.raises(SystemExit):
        _serve_args("--help")
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "(default: [])" not in text and "(default: False)" not in text
    assert "(default: 8000)" in text and "--app-dir" in text
    entries = text.split("\n  -")  # one entry per option
    assert all(entry.lower().count("default:") <= 1 for entry in entries), [
        e for e in entries if e.lower().count("default:") > 1
    ]


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    """A ``myrewards_<id>.py`` in a temp folder that is the working folder; sys.path restored afterwards."""
    name = f"myrewards_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(REWARD_SOURCE, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield name
    sys.modules.pop(name, None)


def test_reward_module_in_the_working_folder_is_found(reward_module):
    config = config_from_args(_serve_args("--reward", f"concise={reward_module}:concise"))
    reward = config.rewards["concise"]
    assert callable(reward) and reward.__module__ == reward_module and reward("p", "abc") == -3.0


def test_app_dir_option_names_the_folder_searched(reward_module, tmp_path):
    elsewhere = tmp_path / "empty"
    elsewhere.mkdir()
    with pytest.raises(ValueError) as info:
        config_from_args(_serve_args("--app-dir", str(elsewhere), "--reward", "concise=not_there_mod:concise"))
    message = str(info.value)
    assert "reward 'concise' ('not_there_mod:concise') cannot be served" in message
    assert str(elsewhere.resolve()) in message and "not_there_mod" in message
    config = config_from_args(_serve_args("--app-dir", str(tmp_path), "--reward", f"c={reward_module}:concise"))
    assert config.rewards["c"]("p", "ab") == -2.0


def test_cli_run_in_a_folder_without_the_module_names_that_folder(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-m", "langchain_aisp.serve", "serve", "--reward", "concise=myrewards:concise"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "no module named 'myrewards'" in out.stderr and str(tmp_path.resolve()) in out.stderr


@pytest.fixture
def client(tiny_lm, reward_module):
    config = config_from_args(
        _serve_args("--reward", f"concise={reward_module}:concise", "--no-warmup", "--num-samples", "2")
    )
    config.defaults.update(num_iterations=2, max_tokens=4)
    with TestClient(create_app(service=AlignmentService(config, llm=tiny_lm))) as test_client:
        yield test_client


def test_chat_openai_sees_the_aisp_headers(client):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url="http://testserver/v1",
        api_key="unused",
        model="default",
        http_client=client,
        include_response_headers=True,
        max_retries=0,
        seed=0,
    )
    message = llm.invoke("Say hi.")
    headers = message.response_metadata["headers"]
    assert float(headers["x-aisp-reward"]) == -float(len(message.content))  # the served reward of this answer
    assert headers["x-aisp-samples"] == "4" and headers["x-aisp-iterations"] == "2"
    assert headers["x-aisp-batch-prompts"] == "1"


def test_openai_sdk_stream_with_usage_has_aisp_on_the_final_chunk(client):
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)
    raw = sdk.chat.completions.with_raw_response.create(
        model="default",
        messages=[{"role": "user", "content": "Say hi."}],
        seed=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.headers["x-aisp-samples"] == "4"
    chunks = list(raw.parse())
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    aisp = last.model_extra["aisp"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert aisp["reward"] == -float(len(text)) and aisp["samples"] == 4
    assert float(raw.headers["x-aisp-reward"]) == aisp["reward"]
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].model_extra["aisp"] == aisp
    without_usage = list(
        sdk.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "Say hi."}], seed=0, stream=True
        )
    )
    assert json.loads(without_usage[-1].model_dump_json())["aisp"]["samples"] == 4  # the last chunk here too


def test_the_server_keeps_a_memory_per_reward_and_comes_back_warm(tiny_lm, tmp_path):
    """--memory: one control memory per registered reward; --memory-dir: saved at shutdown, loaded at start."""
    from langchain_aisp.serve.protocol import aisp_summary, parse_chat_request

    def ask(question: str, reward: str) -> Any:
        body = {"model": "default", "messages": [{"role": "user", "content": question}], "seed": 0,
                "aisp": {"reward": reward}}  # fmt: skip
        return parse_chat_request(body)

    def config() -> ServeConfig:
        return ServeConfig(
            rewards={"long": _long, "short": _short}, defaults={"num_samples": 4, "max_tokens": 4}, warmup=False,
            memory=True, memory_dir=str(tmp_path / "memories"),
        )  # fmt: skip

    service = AlignmentService(config(), llm=tiny_lm)
    service.start()
    try:
        for question in ("Say hi.", "Name a fruit.", "Count to 3."):
            answer = service.run(ask(question, "long"), timeout=120)
            assert answer.message.response_metadata["aisp"]["memory"]["own_rows"] == 1
            assert aisp_summary(answer.message)["memory"]["own_rows"] == 1  # the response's aisp object says so
        service.run(ask("Say hi.", "short"), timeout=120)
        memories = {name: model.control_memory for name, model in service._models.items()}
        assert memories["long"].updates == 3 and memories["short"].updates == 1  # one memory per reward
        assert memories["long"] is not memories["short"]
    finally:
        service.close()
    saved = sorted(p.name for p in (tmp_path / "memories").iterdir())
    assert saved == ["long.safetensors", "short.safetensors"]
    again = AlignmentService(config(), llm=tiny_lm)
    again.start()
    try:
        assert again._models["long"].control_memory.updates == 3  # a restart comes back warm
        assert again._models["long"].control_memory.stats() == memories["long"].stats()
    finally:
        again.close()
    with pytest.raises(ValueError, match="memory_dir keeps the control memories' profiles: it needs memory=True"):
        ServeConfig(memory_dir=str(tmp_path))
    assert config_from_args(_serve_args("--memory", "--memory-dir", "m")).memory_dir == "m"


def _long(prompt: str, response: str) -> float:
    return float(len(response))


def _short(prompt: str, response: str) -> float:
    return -float(len(response))
