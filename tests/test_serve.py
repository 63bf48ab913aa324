"""The OpenAI-compatible server (issue 10) against real clients: the openai SDK and ``langchain_openai.ChatOpenAI``
unmodified (streaming included), cross-request batching, back-pressure, auth, bad input, reward isolation,
client disconnects. Servers run in-process under uvicorn (a thread) on the default model, loaded once.

Timing-free: a ``Gate`` reward holds the engine worker while the test lines requests up behind it, so
"these requests shared one engine run" does not depend on the machine's speed.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import uvicorn  # noqa: E402
from serve_rewards import Gate, fails_on_poison, overlap, slow_on_marker  # noqa: E402

from langchain_aisp.serve import AlignmentService, ServeConfig, create_app  # noqa: E402

pytestmark = [pytest.mark.model, pytest.mark.usefixtures("single_torch_thread")]

SMALL = {"num_samples": 2, "num_iterations": 2, "max_tokens": 8}


class RunningServer:
    """uvicorn serving ``create_app`` in a thread, on a free port of 127.0.0.1."""

    def __init__(self, config: ServeConfig, llm: Any) -> None:
        self.service = AlignmentService(config, llm=llm)
        self.server = uvicorn.Server(
            uvicorn.Config(create_app(service=self.service), host="127.0.0.1", port=0, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs: Any) -> Any:
        kwargs.setdefault("api_key", self.service.config.api_key or "unused")
        kwargs.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=f"{self.url}/v1", **kwargs)

    def metric(self, name: str, **labels: str) -> float:
        return self.service.metrics.value(name, labels or None)

    def wait_for(self, name: str, value: float, timeout: float = 30, **labels: str) -> None:
        deadline = time.monotonic() + timeout
        while self.metric(name, **labels) < value:
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} stayed at {self.metric(name, **labels)} (waited for {value})")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)


@pytest.fixture(scope="module")
def gate() -> Gate:
    return Gate()


@pytest.fixture(scope="module")
def server(default_lm, gate) -> Iterator[RunningServer]:
    config = ServeConfig(
        rewards={"overlap": overlap, "gate": gate, "marker": fails_on_poison},
        defaults=SMALL,
        warmup=False,
        max_body_bytes=64 * 1024,
        max_budget=16,
        max_tokens_limit=64,
    )
    running = RunningServer(config, default_lm)
    yield running
    running.stop()


def _post(server: RunningServer, body: Any, **kwargs: Any) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        content=content,
        headers={"content-type": "application/json", **kwargs.pop("headers", {})},
        timeout=120,
        **kwargs,
    )


def _ask(question: str, **extra: Any) -> dict[str, Any]:
    return {"model": "default", "messages": [{"role": "user", "content": question}], "seed": 0, **extra}


class Blocker:
    """Occupies the engine worker (a request whose gate reward blocks) until ``release()``."""

    def __init__(self, server: RunningServer, gate: Gate) -> None:
        gate.reset()
        self.gate = gate
        self.pool = ThreadPoolExecutor(1)
        body = _ask("BLOCK the worker", aisp={"reward": "gate", "num_samples": 1, "num_iterations": 1})
        self.future = self.pool.submit(_post, server, body)
        assert gate.entered.wait(60), "the blocking request never reached its reward"

    def release(self) -> httpx.Response:
        self.gate.release()
        response = self.future.result(120)
        self.pool.shutdown()
        return response


# --- real clients ----------------------------------------------------------------------------------


def test_openai_sdk_chat_completion_and_stream(server):
    client = server.client()
    models = client.models.list()
    assert [m.id for m in models.data] == ["SmolLM2-135M-Instruct"]
    done = client.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}],
        max_tokens=8,
        seed=3,
    )
    choice = done.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert done.usage.completion_tokens <= 8 and done.usage.prompt_tokens > 5
    aisp = done.model_extra["aisp"]
    assert aisp["samples"] == 4 and aisp["iterations"] == 2 and aisp["reward_name"] == "overlap"
    assert aisp["reward"] == overlap("Name a fruit.", choice.message.content)  # scored under its own prompt
    chunks = list(
        client.chat.completions.create(
            model="default",
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}],
            max_completion_tokens=8,
            seed=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content  # same seed: the same answer, streamed
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == choice.finish_reason
    assert finals[0].model_extra["aisp"]["reward"] == aisp["reward"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == done.usage.completion_tokens


def test_chat_openai_invoke_stream_and_tools(server):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{server.url}/v1", api_key="unused", model="default", max_tokens=8, seed=1)
    message = llm.invoke("Name a colour.")
    assert isinstance(message.content, str) and message.content
    assert message.usage_metadata["output_tokens"] <= 8
    streamed = list(llm.stream("Name a colour."))
    assert "".join(c.content for c in streamed) == message.content

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    with_tools = llm.bind_tools([add], tool_choice="add").bind(max_tokens=24)
    reply = with_tools.invoke("What is 2 + 3?")
    # The forced call reached AISPChatModel: its format term scored every sample (validity is the model's job).
    assert reply.response_metadata["finish_reason"] in ("tool_calls", "stop", "length")
    for call in reply.tool_calls:
        assert call["name"] == "add" and isinstance(call["args"], dict)
    # A whole tool round trip (assistant tool_calls + tool result) is accepted as history.
    history = [
        HumanMessage("What is 2 + 3?"),
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "name": "add", "args": {"a": 2, "b": 3}}]},
        ToolMessage("5", tool_call_id="c1"),
    ]
    final = llm.invoke(history)
    assert isinstance(final.content, str)


def test_structured_output_request_reaches_the_chat_model(server):
    client = server.client()
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    done = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Name a city as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
        max_tokens=16,
        seed=0,
    )
    aisp = done.model_extra["aisp"]
    assert "format_validity" in aisp  # the schema was bound: JSON validity was part of the reward
    # The reward the client sees includes the format term (+/- format_weight) and the grounding term (in
    # [0, grounding_weight], docs/grammar.md), unlike a plain request.
    extra = aisp["reward"] - overlap("Name a city as JSON.", done.choices[0].message.content)
    assert 0.0 <= extra - 10.0 * aisp["format_validity"] <= 1.0 + 1e-9


# --- batching ----------------------------------------------------------------------------------------


def test_concurrent_requests_share_one_engine_run_and_each_is_scored_under_its_own_prompt(server, gate):
    questions = ["Name a fruit.", "Name a river.", "Name a planet.", "Name a tree."]
    runs_before = server.metric("aisp_batch_prompts")
    blocker = Blocker(server, gate)
    with ThreadPoolExecutor(len(questions) + 1) as pool:
        futures = [pool.submit(_post, server, _ask(q, seed=i)) for i, q in enumerate(questions)]  # own seeds
        odd = pool.submit(_post, server, _ask("Name a lake.", max_tokens=6))  # other settings: its own run
        server.wait_for("aisp_queue_depth", len(questions) + 2)  # all admitted behind the blocker
        assert blocker.release().status_code == 200
        answers = [f.result(120) for f in futures]
        lone = odd.result(120)
    bodies = [a.json() for a in answers]
    assert [a.status_code for a in answers] == [200] * 4 and lone.status_code == 200
    assert [b["aisp"]["batch_prompts"] for b in bodies] == [4, 4, 4, 4]
    assert lone.json()["aisp"]["batch_prompts"] == 1
    for question, body in zip(questions, bodies, strict=True):
        assert body["aisp"]["reward"] == overlap(question, body["choices"][0]["message"]["content"])
    # observed once per request: the blocker (alone), the four (together), the odd one (alone)
    assert server.metric("aisp_batch_prompts") == runs_before + 6
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'aisp_batch_prompts_bucket{le="2"}' in metrics and "aisp_samples_generated_total" in metrics


def test_a_request_joins_a_running_run_at_its_next_iteration_and_answers_as_if_alone(server, gate):
    """Continuous batching (issue 19): B arrives while A's first iteration is being scored; it joins A's run at
    the next iteration boundary (other reward, same settings), decodes beside A, and answers as it does alone."""
    settings = {"num_iterations": 3}
    gate.reset()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(_post, server, _ask("BLOCK: name a fruit.", aisp={"reward": "gate", **settings}))
        assert gate.entered.wait(60)  # A holds the engine in its first iteration's scoring
        second = pool.submit(_post, server, _ask("Name a river.", seed=3, aisp=settings))
        server.wait_for("aisp_queue_depth", 2)
        gate.release()
        a, b = first.result(120).json(), second.result(120).json()
    assert a["aisp"]["iterations"] == b["aisp"]["iterations"] == 3
    assert a["aisp"]["batch_prompts"] == b["aisp"]["batch_prompts"] == 2  # B decoded beside A: it did not wait
    alone = _post(server, _ask("Name a river.", seed=3, aisp=settings)).json()
    assert alone["aisp"]["batch_prompts"] == 1
    assert b["choices"][0]["message"]["content"] == alone["choices"][0]["message"]["content"]
    assert b["aisp"]["best_rewards"] == alone["aisp"]["best_rewards"]


# --- limits, auth, bad input -----------------------------------------------------------------------------


def test_full_queue_answers_429_with_retry_after(default_lm, gate):
    config = ServeConfig(rewards={"gate": gate}, defaults=SMALL, warmup=False, max_queue=2)
    small = RunningServer(config, default_lm)
    try:
        blocker = Blocker(small, gate)
        with ThreadPoolExecutor(1) as pool:
            queued = pool.submit(_post, small, _ask("Name a fruit."))
            small.wait_for("aisp_queue_depth", 2)
            with pytest.raises(openai.RateLimitError) as info:
                small.client().chat.completions.create(
                    model="default", messages=[{"role": "user", "content": "One too many."}]
                )
            assert int(info.value.response.headers["retry-after"]) >= 1
            assert info.value.body["code"] == "queue_full" and "retry after" in info.value.body["message"]
            assert small.metric("aisp_requests_total", outcome="rejected") == 1
            assert blocker.release().status_code == 200
            assert queued.result(120).status_code == 200  # nothing admitted was lost
        assert (
            small.client()
            .chat.completions.create(model="default", messages=[{"role": "user", "content": "Room again?"}])
            .choices[0]
            .message.content
            is not None
        )
    finally:
        small.stop()


def test_api_key_is_required_when_set(default_lm):
    config = ServeConfig(rewards={"overlap": overlap}, defaults=SMALL, warmup=False, api_key="s3cret")
    locked = RunningServer(config, default_lm)
    try:
        for key in ("wrong", ""):
            with pytest.raises(openai.AuthenticationError) as info:
                locked.client(api_key=key or "x").chat.completions.create(
                    model="default", messages=[{"role": "user", "content": "hi"}]
                )
            assert info.value.status_code == 401
        no_header = httpx.post(f"{locked.url}/v1/chat/completions", json=_ask("hi"))
        assert no_header.status_code == 401 and no_header.headers["www-authenticate"] == "Bearer"
        assert httpx.get(f"{locked.url}/metrics").status_code == 401
        assert httpx.get(f"{locked.url}/v1/models").status_code == 401
        assert httpx.get(f"{locked.url}/health").status_code == 200  # for load balancers
        ok = locked.client(api_key="s3cret").chat.completions.create(
            model="default", messages=[{"role": "user", "content": "hi"}]
        )
        assert ok.choices[0].message.content is not None
    finally:
        locked.stop()


def test_unknown_reward_is_a_400_listing_the_known_names(server):
    with pytest.raises(openai.BadRequestError) as info:
        server.client().chat.completions.create(
            model="default", messages=[{"role": "user", "content": "hi"}], extra_body={"aisp": {"reward": "os.system"}}
        )
    message = info.value.body["message"]
    assert "unknown reward 'os.system'" in message and "['overlap', 'gate', 'marker']" in message
    assert info.value.body["code"] == "unknown_reward"


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (_ask("hi", n=2), 400, "n=2 is not supported: one answer per request"),
        (_ask("hi", logprobs=True), 400, "logprobs=True is not supported"),
        (_ask("hi", frobnicate=1), 400, "unknown field(s) ['frobnicate']"),
        (_ask("hi", timeout=0), 400, "timeout must be a finite number of seconds > 0, got 0"),
        (b'{"model": "default", "messages": [{"role": "user", "content": "hi"}], "timeout": Infinity}', 400, "got inf"),
        (_ask("hi", timeout=601), 400, "timeout is 601 s, above this server's per-request limit of 600 s"),
        (_ask("hi", functions=[]), 400, "deprecated functions API"),
        (_ask("hi", temperature=-1), 400, "temperature must be a finite number >= 0.0"),
        (_ask("hi", max_tokens=0), 400, "max_tokens must be an integer >= 1"),
        (_ask("hi", max_tokens=65), 400, "max_tokens is 65, above this server's per-request limit of 64"),
        (_ask("hi", aisp={"num_samples": 8, "num_iterations": 4}), 400, "num_samples x num_iterations is 32"),
        (_ask("hi", aisp={"num_samples": 0}), 400, "aisp.num_samples must be an integer >= 1"),
        (_ask("hi", aisp={"sigma": 1}), 400, "unknown aisp field(s) ['sigma']"),
        (_ask("hi", stop=[""]), 400, "stop must be"),
        (_ask("hi", tool_choice="required"), 400, "tool_choice 'required' needs tools"),
        (_ask("hi", response_format={"type": "xml"}), 400, "response_format type must be"),
        (_ask("hi", model="gpt-4o"), 404, "model 'gpt-4o' is not served here"),
        ({"model": "default", "messages": []}, 400, "messages must be a non-empty list"),
        ({"model": "default", "messages": [{"role": "wizard", "content": "x"}]}, 400, "role must be one of"),
        (
            {"model": "default", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            400,
            "the served model is text-only",
        ),
        ({"model": "default", "messages": [{"role": "user", "content": ""}]}, 400, "empty"),
        (
            {
                "model": "default",
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "[1]"}}]},
                ],
            },
            400,
            "arguments must be a JSON object",
        ),
        (b'{"model": "default", "messages": [{"role": "user", "content": "' + b"x" * 70_000 + b'"}]}', 413, "limit"),
    ],
)
def test_bad_requests_get_a_json_error_naming_the_cause(server, body, status, fragment):
    response = _post(server, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"], error["message"]
    assert error["type"] in ("invalid_request_error",)


def test_models_health_and_metrics(server):
    models = httpx.get(f"{server.url}/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["aisp"]["default_reward"] == "overlap"
    assert httpx.get(f"{server.url}/v1/models/default").json()["id"] == "SmolLM2-135M-Instruct"
    assert httpx.get(f"{server.url}/v1/models/nope").status_code == 404
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["rewards"] == ["overlap", "gate", "marker"]
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        "aisp_requests_total",
        "aisp_batch_prompts",
        "aisp_queue_wait_seconds",
        "aisp_samples_generated_total",
        "aisp_tokens_generated_total",
        "aisp_reward_failures_total",
    ):
        assert f"# TYPE {name} " in text
    assert httpx.get(f"{server.url}/nowhere").json()["error"]["message"] == "Not Found"


# --- isolation and faults ------------------------------------------------------------------------------


def test_a_failing_reward_fails_only_its_own_request_in_a_shared_run(server, gate):
    asks = [_ask("Name a fruit."), _ask("POISON: name a fruit."), _ask("Name a bird.")]
    for body in asks:
        body["aisp"] = {"reward": "marker"}
    failures = server.metric("aisp_reward_failures_total", reward="marker")
    blocker = Blocker(server, gate)
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(_post, server, body) for body in asks]
        server.wait_for("aisp_queue_depth", 4)
        blocker.release()
        good1, bad, good2 = (f.result(120) for f in futures)
    assert good1.status_code == good2.status_code == 200
    assert good1.json()["aisp"]["batch_prompts"] == good2.json()["aisp"]["batch_prompts"] == 3  # shared the run
    assert bad.status_code == 500
    error = bad.json()["error"]
    assert error["type"] == "reward_error" and error["code"] == "reward_failed"
    assert "cannot score POISON prompts" in error["message"] and "'marker'" in error["message"]
    assert server.metric("aisp_reward_failures_total", reward="marker") == failures + 1
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


def test_requests_with_different_timeouts_share_one_run_and_each_keeps_its_own(default_lm, gate):
    """Three requests in one batch window, one engine run: no timeout (all its iterations), a timeout that
    passes while its first iteration is scored (its best so far, timed_out=true), a timeout that passes
    while it waits in the queue (504, nothing was scored); the first is not held back by the others."""
    config = ServeConfig(rewards={"slow": slow_on_marker, "gate": gate}, defaults=SMALL, warmup=False)
    own = RunningServer(config, default_lm)
    try:
        blocker = Blocker(own, gate)
        client = own.client()  # the openai SDK sends the field through extra_body (its own timeout is client-side)

        def ask(question: str, **body: Any) -> Any:
            messages = [{"role": "user", "content": question}]
            return client.chat.completions.create(model="default", messages=messages, seed=0, extra_body=body)

        with ThreadPoolExecutor(3) as pool:
            normal = pool.submit(ask, "Name a fruit.")
            # 2 samples x 1.5 s of scoring: its 2.5 s pass during its first iteration, whatever the machine's speed
            short = pool.submit(ask, "SLOW: name a fruit.", timeout=2.5)
            expired = pool.submit(_post, own, _ask("Name a tree.", timeout=0.05))
            own.wait_for("aisp_queue_depth", 4)
            time.sleep(0.1)  # the third request's deadline passes while it waits
            assert blocker.release().status_code == 200
            normal_aisp, short_done = normal.result(120).model_extra["aisp"], short.result(120)
            late = expired.result(120)
        short_aisp = short_done.model_extra["aisp"]
        assert normal_aisp["timed_out"] is False and normal_aisp["iterations"] == 2
        assert short_aisp["timed_out"] is True and short_aisp["iterations"] == 1
        assert short_done.choices[0].message.content
        # one decode batch: the third request's deadline passed before it joined, so it never decoded
        assert normal_aisp["batch_prompts"] == short_aisp["batch_prompts"] == 2
        assert late.status_code == 504, late.text
        error = late.json()["error"]
        assert error["type"] == "timeout_error" and error["code"] == "timeout" and error["param"] == "timeout"
        assert "timeout=0.05 s passed before the first 2 samples" in error["message"]
        assert own.metric("aisp_timed_out_total") == 2
        assert own.metric("aisp_requests_total", outcome="timeout") == 1
        with pytest.raises(openai.APIStatusError) as info:  # what the openai SDK makes of it
            ask("Name a lake.", timeout=1e-6)
        assert info.value.status_code == 504 and info.value.body["code"] == "timeout"
    finally:
        own.stop()


def _raw_request(port: int, body: dict[str, Any]) -> socket.socket:
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


def test_a_client_that_disconnects_stops_costing_work_after_the_current_iteration(server, gate):
    disconnects = server.metric("aisp_disconnects_total")
    cancelled = server.metric("aisp_cancelled_total")
    samples = server.metric("aisp_samples_generated_total")
    long = {"reward": "gate", "num_samples": 2, "num_iterations": 4}
    gate.reset()
    leaver = _raw_request(server.port, _ask("BLOCK then leave", aisp=long))
    assert gate.entered.wait(60)  # its first iteration is being scored
    with ThreadPoolExecutor(1) as pool:
        leaver.close()
        server.wait_for("aisp_disconnects_total", disconnects + 1)
        stayer = pool.submit(_post, server, _ask("Name a fruit.", aisp={"reward": "gate", "num_iterations": 4}))
        server.wait_for("aisp_queue_depth", 2)
        gate.release()
        server.wait_for("aisp_cancelled_total", cancelled + 1)
        body = stayer.result(120).json()
    assert body["aisp"]["iterations"] == 4
    # The leaver's run stopped after its first iteration (2 samples), not 4 iterations (8 samples).
    assert server.metric("aisp_samples_generated_total") - samples == 2 + body["aisp"]["samples"]


def test_a_client_that_leaves_while_queued_costs_nothing(server, gate):
    cancelled = server.metric("aisp_cancelled_total")
    disconnects = server.metric("aisp_disconnects_total")
    samples = server.metric("aisp_samples_generated_total")
    blocker = Blocker(server, gate)
    leaver = _raw_request(server.port, _ask("Name a fruit."))
    server.wait_for("aisp_queue_depth", 2)
    leaver.close()
    server.wait_for("aisp_disconnects_total", disconnects + 1)
    blocker_samples = blocker.release().json()["aisp"]["samples"]
    server.wait_for("aisp_cancelled_total", cancelled + 1)
    assert server.metric("aisp_samples_generated_total") - samples == blocker_samples
    assert server.metric("aisp_queue_depth") == 0


def test_a_burst_still_being_admitted_joins_the_batch_and_a_lone_request_does_not_wait(default_lm):
    from langchain_aisp.serve.protocol import parse_chat_request

    config = ServeConfig(
        rewards={"overlap": overlap}, defaults=SMALL, warmup=False, batch_window_ms=5, batch_window_max_ms=5000
    )
    service = AlignmentService(config, llm=default_lm)
    service.start()
    try:
        with ThreadPoolExecutor(2) as pool:
            with service.admission():  # another request is being read: the batch waits for it past the window
                first = pool.submit(service.run, parse_chat_request(_ask("Name a fruit.")))
                time.sleep(0.5)
                assert not first.done()
                second = pool.submit(service.run, parse_chat_request(_ask("Name a tree.")))
                while service.metrics.value("aisp_queue_depth") < 2:
                    time.sleep(0.01)
            answers = [first.result(120), second.result(120)]
        assert [a.message.response_metadata["aisp"]["batch_prompts"] for a in answers] == [2, 2]
        lone = service.run(parse_chat_request(_ask("Name a bird.")), timeout=120)
        assert lone.message.response_metadata["aisp"]["batch_prompts"] == 1
        assert lone.queue_seconds < 1.0  # the 5 ms window, not the 5 s cap: nothing else was on its way
    finally:
        service.close()


def test_an_unexpected_failure_is_a_json_500_and_the_server_goes_on(server, monkeypatch):
    def broken(_call):
        raise RuntimeError("tokenizer exploded")

    monkeypatch.setattr(server.service, "prepare", broken)
    response = httpx.post(f"{server.url}/v1/chat/completions", json=_ask("hi"), timeout=60)
    assert response.status_code == 500
    assert response.json()["error"] == {
        "message": "internal error: RuntimeError: tokenizer exploded",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    monkeypatch.undo()
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
