"""Scale-out on a local Ray instance (issue 10): the server as a Ray Serve deployment, and ``align_dataset``
on Ray Data. One Ray instance for the module (starting Ray is the slow part); small budgets.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")
pytest.importorskip("ray.data")
openai = pytest.importorskip("openai")

from serve_rewards import fails_on_poison, overlap  # noqa: E402

from langchain_aisp.serve import ServeConfig  # noqa: E402
from langchain_aisp.serve.ray import align_dataset, build_app, deployment, deployment_options  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"num_samples": 2, "num_iterations": 2, "max_tokens": 8}

pytestmark = [pytest.mark.ray, pytest.mark.model]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "RAY_USAGE_STATS_ENABLED", "OMP_NUM_THREADS")}
    # Workers inherit this environment: this checkout's package and the test rewards, one thread each.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), saved["PYTHONPATH"] or ""])
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["OMP_NUM_THREADS"] = "1"
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 1024 * 1024,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_builder_arguments_map_onto_replicas_actor_options_and_autoscaling():
    config = ServeConfig(rewards={"overlap": "serve_rewards:overlap"}, max_queue=40)
    assert deployment_options(config, num_replicas=3, ray_actor_options={"num_gpus": 1}) == {
        "name": "AISPServer",
        "num_replicas": 3,
        "ray_actor_options": {"num_gpus": 1},
        "max_ongoing_requests": 40,  # the server's queue, not Ray's default of 5: requests must reach the batcher
    }
    with pytest.raises(ValueError, match="either num_replicas or autoscaling"):
        deployment_options(config, num_replicas=2, autoscaling_config={"max_replicas": 3})
    app = build_app(
        {
            "rewards": "overlap=serve_rewards:overlap",
            "num_samples": "4",
            "num_gpus": "1",
            "min_replicas": "1",
            "max_replicas": "4",
            "target_ongoing_requests": "16",
        }
    )
    bound = app._bound_deployment
    assert bound.ray_actor_options == {"num_cpus": 1, "num_gpus": 1}
    scaling = bound._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas, scaling.target_ongoing_requests) == (1, 4, 16)
    with pytest.raises(ValueError, match="num_gpus must be a number"):
        build_app({"num_gpus": "lots"})


def test_ray_serve_deployment_serves_the_openai_api_and_batches(local_ray):
    from ray import serve

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        config = ServeConfig(
            rewards={"overlap": "serve_rewards:overlap"}, defaults=SMALL, warmup=False, batch_window_ms=1500
        )
        serve.run(deployment(config, num_replicas=1), name="aisp", route_prefix="/", blocking=False)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=300)
        deadline = time.monotonic() + 180
        while True:
            try:
                assert client.models.list().data[0].id == "SmolLM2-135M-Instruct"
                break
            except (openai.APIConnectionError, openai.NotFoundError, openai.InternalServerError):
                assert time.monotonic() < deadline, "the Ray Serve app never became ready"
                time.sleep(0.5)
        questions = ["Name a fruit.", "Name a river.", "Name a planet."]
        with ThreadPoolExecutor(len(questions)) as pool:
            answers = list(
                pool.map(
                    lambda q: client.chat.completions.create(
                        model="default", messages=[{"role": "user", "content": q}], seed=0
                    ),
                    questions,
                )
            )
        for question, answer in zip(questions, answers, strict=True):
            aisp = answer.model_extra["aisp"]
            assert aisp["batch_prompts"] == len(questions)  # one engine run in the replica
            assert aisp["reward"] == overlap(question, answer.choices[0].message.content)
        stream = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "Name a fruit."}], seed=0, stream=True
        )
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == answers[0].choices[0].message.content
        with pytest.raises(openai.BadRequestError, match="unknown reward 'nope'"):
            client.chat.completions.create(
                model="default", messages=[{"role": "user", "content": "hi"}], extra_body={"aisp": {"reward": "nope"}}
            )
    finally:
        serve.shutdown()


def test_align_dataset_writes_answer_reward_and_metadata_per_row(local_ray):
    rows = [
        {"id": 0, "prompt": "Name a fruit."},
        {"id": 1, "prompt": "POISON: name a fruit."},  # the reward fails on this row only
        {"id": 2, "prompt": ""},  # bad input: this row only
        {"id": 3, "prompt": "Name a river."},
    ]
    dataset = ray.data.from_items(rows)
    aligned = align_dataset(dataset, "serve_rewards:fails_on_poison", batch_size=4, seed=0, **SMALL)
    out = sorted(aligned.take_all(), key=lambda r: r["id"])
    assert [r["id"] for r in out] == [0, 1, 2, 3]
    for row in (out[0], out[3]):
        assert row["error"] is None and row["answer"]
        assert row["reward"] == fails_on_poison(row["prompt"], row["answer"])  # scored under its own prompt
        meta = json.loads(row["aisp"])
        assert meta["samples"] == 4 and meta["iterations"] == 2 and meta["batch_prompts"] == 3
    assert "cannot score POISON prompts" in out[1]["error"] and out[1]["aisp"] is None
    assert "empty" in out[2]["error"] and out[2]["answer"] is None
