"""The ``langchain-aisp`` command. ``langchain-aisp serve``: the OpenAI-compatible server under uvicorn.

    langchain-aisp serve --reward relevance=langchain_aisp.rewards:EmbeddingSimilarityReward \\
        --num-samples 4 --num-iterations 2 --max-tokens 64

``langchain-aisp warmup --model ... --rows 8,64 --max-tokens 256``: compile and capture the static
decoding buckets ahead (for a server image), saved to the persistent compile cache.

Binds 127.0.0.1:8000 unless told otherwise. SIGINT/SIGTERM shut down gracefully: no new
request is admitted, every admitted one is answered, then the process exits.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from langchain_aisp.engine.threads import NUM_THREADS_ENV, num_threads_arg, set_cpu_threads
from langchain_aisp.serve.config import API_KEY_ENV, DEFAULT_REWARD_SPEC, ServeConfig, parse_reward_spec

_INSTALL_HINT = "the server needs the 'serve' extra: pip install 'langchain-aisp[serve]'"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``(default: X)`` after an option's help, unless the help states its default or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or action.default is None or action.default is False or action.default == []:
            return text
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="langchain-aisp", description="langchain-aisp command line")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the OpenAI-compatible server (cross-request Batched AISP)",
        description=(
            "Serve POST /v1/chat/completions (JSON and SSE streaming), GET /v1/models, GET /health and GET /metrics. "
            "Requests that arrive within the batching window and share settings run as one Batched AISP engine run."
        ),
        formatter_class=_HelpFormatter,
    )
    net = serve.add_argument_group("network and security")
    net.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes the server)")
    net.add_argument("--port", type=int, default=8000, help="port to bind (0: a free port)")
    net.add_argument(
        "--api-key", default=None, help=f"bearer token required on /v1/* and /metrics (default: ${API_KEY_ENV}, if set)"
    )
    net.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (413 above)")
    model = serve.add_argument_group("model and rewards")
    model.add_argument("--model", default=None, help="hub id or local folder (default: the embedded SmolLM2-135M)")
    model.add_argument("--served-model-name", default=None, help="name in /v1/models (default: the model's name)")
    model.add_argument(
        "--reward",
        action="append",
        default=[],
        metavar="NAME=module:callable",
        help=f"register a reward by name (repeatable; the first is the default). Default: {DEFAULT_REWARD_SPEC}",
    )
    model.add_argument(
        "--app-dir",
        default=".",
        help="folder searched first for reward modules, as uvicorn's --app-dir (default: the working folder)",
    )
    model.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    model.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    model.add_argument("--trust-remote-code", action="store_true")
    model.add_argument(
        "--num-threads",
        type=num_threads_arg,
        default=None,
        help=f"torch CPU threads of the server: N or 'all' (default: ${NUM_THREADS_ENV}, else 1)",
    )
    model.add_argument("--no-warmup", action="store_true", help="skip the start-up check of every reward")
    model.add_argument(
        "--memory", action="store_true", help="a control memory per reward, learned across requests (see docs)"
    )
    model.add_argument(
        "--memory-dir", default=None, help="with --memory: folder of the memories' profiles (loaded at start, saved "
        "at shutdown)",
    )  # fmt: skip
    aisp = serve.add_argument_group("defaults for requests that do not set them")
    aisp.add_argument("--method", choices=["aisp", "bon", "sample"], default=None)
    aisp.add_argument("--num-samples", type=int, default=None)
    aisp.add_argument("--num-iterations", type=int, default=None)
    aisp.add_argument("--max-tokens", type=int, default=None)
    aisp.add_argument("--temperature", type=float, default=None)
    limits = serve.add_argument_group("batching and limits")
    limits.add_argument("--batch-window-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    limits.add_argument(
        "--batch-window-max-ms",
        type=float,
        default=50.0,
        help="how long a batch may wait for requests still being read when the window ends (a burst)",
    )
    limits.add_argument("--max-batch-prompts", type=int, default=32, help="most requests per batching round")
    limits.add_argument("--max-batch-rows", type=int, default=64, help="rows (prompts x samples) decoded together")
    limits.add_argument("--max-queue", type=int, default=128, help="requests admitted at once (429 above)")
    limits.add_argument("--max-budget", type=int, default=256, help="per-request num_samples x num_iterations cap")
    limits.add_argument("--max-tokens-limit", type=int, default=1024, help="per-request max_tokens cap")
    limits.add_argument(
        "--max-timeout-s", type=float, default=600.0, help="per-request timeout cap, in seconds (400 above)"
    )
    limits.add_argument(
        "--max-pending-work", type=int, default=1 << 21, help="server-wide cap on admitted work, in sampled tokens"
    )
    limits.add_argument(
        "--graceful-timeout", type=float, default=300.0, help="seconds to finish admitted requests on shutdown"
    )
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    _add_warmup_parser(commands)
    return parser


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    return values


def _add_warmup_parser(commands: Any) -> None:
    warm = commands.add_parser(
        "warmup",
        help="compile and capture the static decoding buckets ahead (saved to the compile cache)",
        description=(
            "Build the static decoding buckets of every rows x max-tokens x prompt-tokens combination: "
            "compile (decoding 'compiled', or 'auto' on CUDA), capture, and save the compiled "
            "step to the persistent compile cache, so later processes on this machine skip the compile and "
            "decoding='auto' takes the compiled path for these buckets."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    warm.add_argument("--model", default=None, help="hub id or local folder (default: the embedded SmolLM2-135M)")
    warm.add_argument("--device", default="auto")
    warm.add_argument("--dtype", default="auto")
    warm.add_argument("--trust-remote-code", action="store_true")
    lists = "comma-separated; default: warmup.DEFAULT_"
    warm.add_argument("--rows", type=_int_list, default=None, help=f"rows decoded together ({lists}ROWS)")
    warm.add_argument("--max-tokens", type=_int_list, default=None, help=f"new tokens per call ({lists}MAX_TOKENS)")
    warm.add_argument("--prompt-tokens", type=_int_list, default=None, help=f"prompt lengths ({lists}PROMPT_TOKENS)")
    warm.add_argument(
        "--decoding",
        choices=["auto", "compiled", "static"],
        default="auto",
        help="auto: what decoding='auto' uses (compiled buckets on CUDA, nothing on CPU, which decodes eagerly)",
    )
    warm.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def _warmup(args: argparse.Namespace) -> int:
    """``langchain-aisp warmup``: load the model, build its buckets, print one line per bucket."""
    from langchain_aisp.engine import lm as lm_module
    from langchain_aisp.engine.decode import compile_cache
    from langchain_aisp.engine.decode import warmup as w

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        lm = lm_module.load_causal_lm(
            args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code
        )
    except Exception as exc:
        print(f"langchain-aisp warmup: cannot load the model: {exc}", file=sys.stderr)
        return 1
    built = w.warmup(
        lm,
        rows=args.rows or w.DEFAULT_ROWS,
        max_tokens=args.max_tokens or w.DEFAULT_MAX_TOKENS,
        prompt_tokens=args.prompt_tokens or w.DEFAULT_PROMPT_TOKENS,
        decoding=args.decoding,
    )
    for b in built:
        print(
            f"rows {b['rows']} max_tokens {b['max_tokens']} prompt_tokens {b['prompt_tokens']}: "
            f"cache {b['cache_len']}, {b['path']}, {b['seconds']:.1f} s, compile cache {b['compile_cache'] or '-'}"
        )
    where = compile_cache.cache_dir() if any(b["compile_cache"] for b in built) else "nothing compiled"
    print(f"{len(built)} bucket(s) of {lm.name} on {lm.device} ready; compile cache: {where}")
    if not built:
        hint = "nothing to build (--decoding static or compiled builds them anyway)"
        print(f"decoding={args.decoding!r} decodes eagerly on {lm.device}: {hint}")
    return 0


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """The :class:`ServeConfig` of parsed ``serve`` arguments (ValueError with the reason on bad values)."""
    rewards: dict[str, Any] = {}
    for spec in args.reward:
        name, path = parse_reward_spec(spec)
        if name in rewards:
            raise ValueError(f"reward name {name!r} is registered twice")
        rewards[name] = path
    defaults = {
        key: value
        for key in ("method", "num_samples", "num_iterations", "max_tokens", "temperature")
        if (value := getattr(args, key)) is not None
    }
    return ServeConfig(
        model=args.model,
        served_model_name=args.served_model_name,
        rewards=rewards,
        api_key=args.api_key,
        defaults=defaults,
        device=args.device,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        batch_window_ms=args.batch_window_ms,
        batch_window_max_ms=args.batch_window_max_ms,
        max_batch_prompts=args.max_batch_prompts,
        max_batch_rows=args.max_batch_rows,
        max_queue=args.max_queue,
        max_budget=args.max_budget,
        max_tokens_limit=args.max_tokens_limit,
        max_timeout_s=args.max_timeout_s,
        max_pending_work=args.max_pending_work,
        max_body_bytes=args.max_body_bytes,
        warmup=not args.no_warmup,
        memory=args.memory,
        memory_dir=args.memory_dir,
        app_dir=args.app_dir,
    )


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "warmup":
        return _warmup(args)
    if args.command != "serve":  # pragma: no cover - argparse enforces the choice
        parser.error(f"unknown command {args.command!r}")
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        import uvicorn

        from langchain_aisp.serve.app import create_app
        from langchain_aisp.serve.service import AlignmentService
    except ImportError as exc:
        print(f"langchain-aisp serve: {_INSTALL_HINT} ({exc})", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_cpu_threads(args.num_threads)  # this process is the server: one thread unless the operator says otherwise
    service = AlignmentService(config)
    try:
        service.start()  # rewards, model and warm-up before the port opens: a broken setup fails here, clearly
    except Exception as exc:
        print(f"langchain-aisp serve: cannot start: {exc}", file=sys.stderr)
        return 1
    if config.api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("langchain_aisp.serve").warning(
            "binding %s without an API key: anyone who reaches this port can use the server (set --api-key or $%s)",
            args.host,
            API_KEY_ENV,
        )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(service=service),
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            timeout_graceful_shutdown=args.graceful_timeout,
            lifespan="on",
        )
    )
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    raise SystemExit(main())
