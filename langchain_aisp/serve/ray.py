"""Scale-out on Ray: the server as a Ray Serve deployment, and :func:`align_dataset` on Ray Data.

Ray Serve (each replica loads the model once and batches its own concurrent requests)::

    serve run langchain_aisp.serve.ray:app                      # defaults, 1 replica
    serve run langchain_aisp.serve.ray:build_app \\
        rewards=relevance=langchain_aisp.rewards:EmbeddingSimilarityReward \\
        num_samples=4 num_iterations=2 num_replicas=2 num_gpus=1

or from Python: ``serve.run(deployment(ServeConfig(...), num_replicas=2, ray_actor_options={"num_gpus": 1}))``.
Autoscaling: ``min_replicas=1 max_replicas=4 target_ongoing_requests=16`` (builder arguments) or
``autoscaling_config={...}``.

Ray Data (one model per actor, Batched AISP inside each batch)::

    aligned = align_dataset(ray.data.read_json("prompts.jsonl"), reward="my_pkg.rewards:score", batch_size=16)

Needs the ``ray`` extra (``pip install 'langchain-aisp[ray]'``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from ray import serve

from langchain_aisp.engine.config import AISPParams
from langchain_aisp.serve.config import ServeConfig

DEPLOYMENT_NAME = "AISPServer"

_DEPLOYMENT_ARGS = (
    "name",
    "num_replicas",
    "num_cpus",
    "num_gpus",
    "memory",
    "min_replicas",
    "max_replicas",
    "initial_replicas",
    "target_ongoing_requests",
    "max_ongoing_requests",
    "graceful_shutdown_timeout_s",
)
"""Builder arguments that shape the Ray Serve deployment (the rest configure the server)."""


def deployment_options(
    config: ServeConfig,
    *,
    num_replicas: int | str | None = None,
    ray_actor_options: dict[str, Any] | None = None,
    autoscaling_config: dict[str, Any] | None = None,
    max_ongoing_requests: int | None = None,
    graceful_shutdown_timeout_s: float | None = None,
    name: str = DEPLOYMENT_NAME,
) -> dict[str, Any]:
    """Keyword arguments for ``serve.deployment``.

    ``max_ongoing_requests`` defaults to the server's ``max_queue``: Ray Serve's own default (5)
    would keep all but 5 concurrent requests in Ray's queue, where they cannot join a batch;
    the server's bounded queue answers 429 instead. ``num_replicas`` and ``autoscaling_config``
    are exclusive (Ray's rule).
    """
    if num_replicas is not None and autoscaling_config is not None:
        raise ValueError("give either num_replicas or autoscaling settings (min/max_replicas), not both")
    options: dict[str, Any] = {
        "name": name,
        "max_ongoing_requests": max_ongoing_requests or config.max_queue,
        "ray_actor_options": dict(ray_actor_options or {"num_cpus": 1}),
    }
    if autoscaling_config is not None:
        options["autoscaling_config"] = dict(autoscaling_config)
    else:
        options["num_replicas"] = 1 if num_replicas is None else num_replicas
    if graceful_shutdown_timeout_s is not None:
        options["graceful_shutdown_timeout_s"] = graceful_shutdown_timeout_s
    return options


def deployment(config: ServeConfig | None = None, **options: Any) -> Any:
    """The server as a bound Ray Serve application (pass it to ``serve.run``); ``options`` as in
    :func:`deployment_options`. Each replica builds the FastAPI app, loads the model in the app's
    lifespan, and on shutdown finishes its admitted requests."""
    config = config or ServeConfig()
    payload = config.to_mapping()

    def build_asgi_app() -> Any:
        from langchain_aisp.serve.app import create_app

        return create_app(ServeConfig(**payload))

    ingress = serve.ingress(build_asgi_app)()
    bound: Any = serve.deployment(ingress, **deployment_options(config, **options))
    return bound.bind()


def build_app(args: Mapping[str, Any]) -> Any:
    """Application builder for ``serve run langchain_aisp.serve.ray:build_app key=value ...``.

    Server settings are :class:`ServeConfig` fields (``rewards=a=mod:fn,b=mod:fn``, ``model=...``,
    ``batch_window_ms=...``) and AISP defaults (``num_samples=4``); deployment settings are
    ``num_replicas``, ``num_cpus``, ``num_gpus``, ``memory``, ``min_replicas``, ``max_replicas``,
    ``initial_replicas``, ``target_ongoing_requests``, ``max_ongoing_requests``,
    ``graceful_shutdown_timeout_s`` and ``name``.
    """
    server_args = {k: v for k, v in args.items() if k not in _DEPLOYMENT_ARGS}
    deploy = {k: v for k, v in args.items() if k in _DEPLOYMENT_ARGS}
    config = ServeConfig.from_mapping(server_args)
    actor: dict[str, Any] = {"num_cpus": _number(deploy.pop("num_cpus", 1), "num_cpus")}
    for key in ("num_gpus", "memory"):
        if key in deploy:
            actor[key] = _number(deploy.pop(key), key)
    autoscaling = {
        key: _number(deploy.pop(key), key)
        for key in ("min_replicas", "max_replicas", "initial_replicas", "target_ongoing_requests")
        if key in deploy
    }
    num_replicas = deploy.pop("num_replicas", None)
    if isinstance(num_replicas, str) and num_replicas != "auto":
        num_replicas = int(_number(num_replicas, "num_replicas"))
    max_ongoing = deploy.pop("max_ongoing_requests", None)
    grace = deploy.pop("graceful_shutdown_timeout_s", None)
    return deployment(
        config,
        num_replicas=num_replicas,
        ray_actor_options=actor,
        autoscaling_config=autoscaling or None,
        max_ongoing_requests=None if max_ongoing is None else int(_number(max_ongoing, "max_ongoing_requests")),
        graceful_shutdown_timeout_s=None if grace is None else _number(grace, "graceful_shutdown_timeout_s"),
        name=str(deploy.pop("name", DEPLOYMENT_NAME)),
    )


def _number(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return int(number) if number.is_integer() else number


app = build_app({})
"""``serve run langchain_aisp.serve.ray:app``: the default server (default model and reward, 1 replica)."""


# --- Ray Data -----------------------------------------------------------------------------------------


class _Aligner:
    """A Ray Data actor: one AISPChatModel (loaded once), one Batched AISP engine run per batch."""

    def __init__(self, reward: Any, prompt_column: str, chat_model_kwargs: dict[str, Any]) -> None:
        from langchain_aisp.chat_models import AISPChatModel

        self.prompt_column = prompt_column
        self.model = AISPChatModel(reward=reward, **chat_model_kwargs)
        self.model.prepare("ping")  # load the model now, once per actor

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from langchain_aisp.engine.aisp import RewardError
        from langchain_aisp.serve.protocol import APIError, parse_messages

        prompts = list(batch[self.prompt_column])
        answers: list[str | None] = [None] * len(prompts)
        rewards: list[float | None] = [None] * len(prompts)
        errors: list[str | None] = [None] * len(prompts)
        metadata: list[str | None] = [None] * len(prompts)
        calls, rows = [], []
        for row, value in enumerate(prompts):
            try:
                messages: Any = value if isinstance(value, str) else parse_messages([dict(m) for m in value])
                calls.append(self.model.prepare(messages))
                rows.append(row)
            except APIError as exc:
                errors[row] = exc.message
            except (ValueError, TypeError) as exc:
                errors[row] = str(exc)
        for row, outcome in zip(rows, self.model.run_prepared(calls), strict=True):
            if isinstance(outcome, BaseException):
                errors[row] = f"{type(outcome).__name__}: {outcome}"
                partial = outcome.partial[0] if isinstance(outcome, RewardError) and outcome.partial else None
                if partial is not None:  # nothing already paid for is lost: the best answer before the failure
                    answers[row], rewards[row] = partial.text, partial.reward
                continue
            meta = outcome.response_metadata["aisp"]
            answers[row] = outcome.content if isinstance(outcome.content, str) else outcome.text
            rewards[row] = meta["reward"]
            metadata[row] = json.dumps(
                {
                    "method": meta["method"],
                    "samples": meta["samples"],
                    "iterations": len(meta["rewards"]),
                    "best_iteration": meta["best_iteration"],
                    "generated_tokens": meta["generated_tokens"],
                    "finish_reason": meta["finish_reason"],
                    "batch_prompts": meta["batch_prompts"],
                    "reward_name": meta["reward_name"],
                    "model": outcome.response_metadata.get("model_name"),
                }
            )
        out = dict(batch)
        out.update(answer=answers, reward=rewards, error=errors, aisp=metadata)
        return out


def align_dataset(
    dataset: Any,
    reward: Any,
    *,
    prompt_column: str = "prompt",
    batch_size: int = 16,
    concurrency: int = 1,
    num_cpus: float = 1,
    num_gpus: float = 0,
    **chat_model_kwargs: Any,
) -> Any:
    """Align every row of a Ray Dataset offline: ``map_batches`` over actors that each hold one model.

    ``dataset[prompt_column]`` holds a question (string) or a conversation (a list of OpenAI-style
    ``{"role", "content"}`` messages). Each batch of ``batch_size`` rows is one Batched AISP engine
    run. ``reward`` is anything ``AISPChatModel`` accepts (a function, a ``Reward``, a
    ``"module:qualname"`` path); ``chat_model_kwargs`` are ``AISPChatModel`` fields (``model``,
    ``num_samples``, ``num_iterations``, ``max_tokens``, ``seed``, ``device``...).

    Adds the columns ``answer`` (str), ``reward`` (float), ``error`` (None, or why that row failed:
    bad input or a failing reward; with the best answer found before a reward failure kept in
    ``answer``/``reward``) and ``aisp`` (JSON: method, samples, iterations, best_iteration,
    generated_tokens, finish_reason, batch_prompts, reward_name, model). A bad row never fails
    its batch. Returns the (lazy) Dataset.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an integer >= 1 (actors), got {concurrency!r}")
    split = {k: chat_model_kwargs[k] for k in ("method", "num_samples") if k in chat_model_kwargs}
    n = AISPParams(**split).num_samples  # the method's own when not given; a bad value fails here, named
    chat_model_kwargs.setdefault("max_batch_rows", max(64, batch_size * n))
    return dataset.map_batches(
        _Aligner,
        fn_constructor_kwargs={
            "reward": reward,
            "prompt_column": prompt_column,
            "chat_model_kwargs": chat_model_kwargs,
        },
        batch_size=batch_size,
        concurrency=concurrency,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        batch_format="numpy",
    )
