"""Compare grammar libraries for constrained decoding on SmolLM2's tokenizer (issue 9).

Measures, for xgrammar, llguidance and outlines-core (whichever are installed):

* JSON-schema coverage: each schema must compile, accept a valid instance token by token
  (every token in the mask, EOS allowed at the end) and reject an invalid one;
* compile time per schema (tokenizer set-up reported separately);
* per-token mask cost on CPU at batch 8 and 32 (fill every row's mask, then advance every row);
* thread safety: 4 threads walking their own matchers of one compiled grammar at once must give
  the same masks as one thread;
* installed size of the package (its files on disk) and its declared dependencies.

Run from the repository root (results in docs/grammar.md)::

    OMP_NUM_THREADS=1 python scripts/compare_grammar_libs.py

Each library is optional: a missing one is reported as such. Nothing here is imported by the package.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import statistics
import threading
import time
from typing import Any

import torch

SCHEMAS: dict[str, tuple[dict[str, Any], Any, Any]] = {
    "nested objects": (
        {
            "type": "object",
            "properties": {
                "user": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "address": {
                            "type": "object",
                            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                            "required": ["city", "zip"],
                        },
                    },
                    "required": ["name", "address"],
                }
            },
            "required": ["user"],
        },
        {"user": {"name": "Ada", "address": {"city": "Paris", "zip": "75001"}}},
        {"user": {"name": "Ada", "address": {"city": "Paris"}}},
    ),
    "arrays": (
        {
            "type": "object",
            "properties": {
                "tags": {"type": "array", "items": {"type": "string"}},
                "scores": {"type": "array", "items": {"type": "number"}, "minItems": 1},
            },
            "required": ["tags", "scores"],
        },
        {"tags": ["a", "b"], "scores": [1.5, 2]},
        {"tags": ["a"], "scores": []},
    ),
    "enums": (
        {
            "type": "object",
            "properties": {"unit": {"enum": ["celsius", "fahrenheit"]}, "level": {"type": "integer", "enum": [1, 2]}},
            "required": ["unit", "level"],
        },
        {"unit": "celsius", "level": 2},
        {"unit": "kelvin", "level": 2},
    ),
    "anyOf": (
        {
            "type": "object",
            "properties": {"value": {"anyOf": [{"type": "integer"}, {"type": "string"}]}},
            "required": ["value"],
        },
        {"value": "seven"},
        {"value": [7]},
    ),
    "unicode strings": (
        {"type": "object", "properties": {"customer_name": {"type": "string"}}, "required": ["customer_name"]},
        {"customer_name": "你好啊集团 こんにちは"},
        {"customer": "你好"},
    ),
    "optional fields": (
        {
            "type": "object",
            "properties": {
                "setup": {"type": "string"},
                "punchline": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            },
            "required": ["setup"],
        },
        {"setup": "Why?"},
        {"punchline": "Because."},
    ),
    "additionalProperties false": (
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}},
            "required": ["a"],
            "additionalProperties": False,
        },
        {"a": 1},
        {"a": 1, "b": 2},
    ),
    "$defs / $ref (pydantic)": (
        {
            "$defs": {"Pet": {"type": "object", "properties": {"kind": {"type": "string"}}, "required": ["kind"]}},
            "type": "object",
            "properties": {"pets": {"type": "array", "items": {"$ref": "#/$defs/Pet"}}},
            "required": ["pets"],
        },
        {"pets": [{"kind": "cat"}]},
        {"pets": [{"name": "cat"}]},
    ),
    "number bounds": (
        {
            "type": "object",
            "properties": {"input": {"type": "integer", "exclusiveMinimum": -1000, "exclusiveMaximum": 1000}},
            "required": ["input"],
        },
        {"input": 3},
        {"input": 1000},
    ),
    "string pattern/length": (
        {
            "type": "object",
            "properties": {
                "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
                "note": {"type": "string", "maxLength": 5},
            },
            "required": ["code", "note"],
        },
        {"code": "ABC", "note": "hi"},
        {"code": "abc", "note": "hi"},
    ),
    "recursion": (
        {
            "$defs": {
                "Node": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                    },
                    "required": ["name", "children"],
                }
            },
            "$ref": "#/$defs/Node",
        },
        {"name": "a", "children": [{"name": "b", "children": []}]},
        {"name": "a", "children": [{"children": []}]},
    ),
}


class Lib:
    """One library behind four calls: compile(schema) -> grammar; matcher(grammar); fill(m, bitmask, row); advance."""

    name = ""
    package = ""

    def setup(self, tokenizer: Any, vocab_size: int, eos: int) -> None: ...
    def compile(self, schema: dict[str, Any]) -> Any: ...
    def matcher(self, grammar: Any) -> Any: ...
    def fill(self, matcher: Any, bitmask: torch.Tensor, row: int) -> None: ...
    def advance(self, matcher: Any, token: int) -> bool: ...
    def reset(self, matcher: Any) -> None: ...


class XGrammar(Lib):
    name, package = "xgrammar", "xgrammar"

    def setup(self, tokenizer: Any, vocab_size: int, eos: int) -> None:
        import xgrammar as xgr

        self.xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=[eos])
        self.compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)

    def compile(self, schema: dict[str, Any]) -> Any:
        return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=True, strict_mode=True)

    def matcher(self, grammar: Any) -> Any:
        return self.xgr.GrammarMatcher(grammar)

    def fill(self, matcher: Any, bitmask: torch.Tensor, row: int) -> None:
        matcher.fill_next_token_bitmask(bitmask, row)

    def advance(self, matcher: Any, token: int) -> bool:
        return bool(matcher.accept_token(token))

    def reset(self, matcher: Any) -> None:
        matcher.reset()


class LLGuidance(Lib):
    name, package = "llguidance", "llguidance"

    def setup(self, tokenizer: Any, vocab_size: int, eos: int) -> None:
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.llg = llguidance
        self.tok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos)

    def compile(self, schema: dict[str, Any]) -> Any:
        grammar = self.llg.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": True})
        error = self.llg.LLMatcher.validate_grammar(grammar, self.tok)
        if error:
            raise ValueError(error)
        self.matcher(grammar)  # the matcher's construction is where the grammar is really built
        return grammar

    def matcher(self, grammar: Any) -> Any:
        m = self.llg.LLMatcher(self.tok, grammar, log_level=0)
        if m.is_error():
            raise ValueError(m.get_error())
        return m

    def fill(self, matcher: Any, bitmask: torch.Tensor, row: int) -> None:
        self.llg.torch.fill_next_token_bitmask(matcher, bitmask, row)

    def advance(self, matcher: Any, token: int) -> bool:
        return bool(matcher.consume_token(token))

    def reset(self, matcher: Any) -> None:
        matcher.reset()


class OutlinesCore(Lib):
    name, package = "outlines-core", "outlines_core"

    def setup(self, tokenizer: Any, vocab_size: int, eos: int) -> None:
        import outlines_core as oc
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        self.oc = oc
        decode = {c: b for b, c in bytes_to_unicode().items()}
        special = set(tokenizer.all_special_ids)
        vocab: dict[bytes, list[int]] = {}
        for token, idx in tokenizer.get_vocab().items():
            if idx in special or idx >= vocab_size:
                continue
            raw = bytes(decode[c] for c in token) if all(c in decode for c in token) else token.encode()
            vocab.setdefault(raw, []).append(idx)
        self.vocab = oc.Vocabulary(eos, vocab)
        self.eos = eos

    def compile(self, schema: dict[str, Any]) -> Any:
        regex = self.oc.json_schema.build_regex_from_schema(json.dumps(schema), r"[ ]?")
        return self.oc.Index(regex, self.vocab)

    def matcher(self, grammar: Any) -> Any:
        return self.oc.Guide(grammar)

    def fill(self, matcher: Any, bitmask: torch.Tensor, row: int) -> None:
        v = bitmask[row]
        matcher.write_mask_into(v.data_ptr(), v.numel(), v.element_size())

    def advance(self, matcher: Any, token: int) -> bool:
        try:
            matcher.advance(token, return_tokens=False)
            return True
        except Exception:
            return False

    def reset(self, matcher: Any) -> None:
        matcher.reset()


def allowed(bitmask: torch.Tensor, row: int, token: int) -> bool:
    return bool((int(bitmask[row, token // 32]) >> (token % 32)) & 1)


def walk(lib: Lib, grammar: Any, tokens: list[int], eos: int, words: int) -> tuple[bool, list[torch.Tensor]]:
    """Feed ``tokens`` (then EOS) through a fresh matcher; True when every one was allowed."""
    m = lib.matcher(grammar)
    bitmask = torch.zeros(1, words, dtype=torch.int32)
    masks = []
    for token in [*tokens, eos]:
        bitmask.zero_()
        lib.fill(m, bitmask, 0)
        masks.append(bitmask[0].clone())
        if not allowed(bitmask, 0, token):
            return False, masks
        if token != eos and not lib.advance(m, token):
            return False, masks
    return True, masks


def coverage(lib: Lib, tokenizer: Any, eos: int, words: int) -> dict[str, tuple[str, float]]:
    out: dict[str, tuple[str, float]] = {}
    for name, (schema, good, bad) in SCHEMAS.items():
        start = time.perf_counter()
        try:
            grammar = lib.compile(schema)
        except Exception as exc:
            out[name] = (f"compile error: {str(exc).splitlines()[0][:60]}", float("nan"))
            continue
        compile_s = time.perf_counter() - start
        good_ids = tokenizer(json.dumps(good, ensure_ascii=False), add_special_tokens=False).input_ids
        bad_ids = tokenizer(json.dumps(bad, ensure_ascii=False), add_special_tokens=False).input_ids
        try:
            ok_good, _ = walk(lib, grammar, good_ids, eos, words)
            ok_bad, _ = walk(lib, grammar, bad_ids, eos, words)
        except Exception as exc:
            out[name] = (f"error: {str(exc).splitlines()[0][:60]}", compile_s)
            continue
        verdict = "ok" if ok_good and not ok_bad else ("rejects valid" if not ok_good else "accepts invalid")
        out[name] = (verdict, compile_s)
    return out


def mask_cost(lib: Lib, grammar: Any, tokens: list[int], batch: int, words: int, steps: int, repeats: int) -> float:
    """ms per decoding step to fill ``batch`` masks and advance ``batch`` matchers (median of repeats)."""
    times = []
    for _ in range(repeats):
        matchers = [lib.matcher(grammar) for _ in range(batch)]
        position = [i % 5 for i in range(batch)]  # rows at different places of the instance
        for r, m in enumerate(matchers):
            for t in tokens[: position[r]]:
                lib.advance(m, t)
        bitmask = torch.zeros(batch, words, dtype=torch.int32)
        start = time.perf_counter()
        for _ in range(steps):
            for r, m in enumerate(matchers):
                lib.fill(m, bitmask, r)
            for r, m in enumerate(matchers):
                if position[r] >= len(tokens):
                    lib.reset(m)
                    position[r] = 0
                lib.advance(m, tokens[position[r]])
                position[r] += 1
        times.append((time.perf_counter() - start) / steps * 1e3)
    return statistics.median(times)


def thread_safety(lib: Lib, grammar: Any, tokens: list[int], eos: int, words: int) -> str:
    _, reference = walk(lib, grammar, tokens, eos, words)
    errors: list[str] = []

    def work() -> None:
        try:
            for _ in range(5):
                _, masks = walk(lib, grammar, tokens, eos, words)
                if len(masks) != len(reference) or any(
                    not torch.equal(a, b) for a, b in zip(masks, reference, strict=False)
                ):
                    errors.append("different masks")
        except Exception as exc:  # pragma: no cover - reported
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return "ok (4 threads, same masks)" if not errors else f"FAILED: {errors[0]}"


def package_info(package: str) -> tuple[float, list[str]]:
    dist = md.distribution(package)
    size = sum((p.size or 0) for p in (dist.files or [])) / 1e6
    requires = [r.split(";")[0].strip() for r in (dist.requires or []) if "extra ==" not in r]
    return size, requires


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from langchain_aisp.engine.lm import load_causal_lm

    lm = load_causal_lm(None, device="cpu")
    tokenizer = lm.tokenizer
    vocab = int(lm.head_weight.shape[0])
    eos = lm.eos_token_ids[0]
    words = (vocab + 31) // 32
    bench_schema, bench_value, _ = SCHEMAS["nested objects"]
    bench_tokens = tokenizer(json.dumps(bench_value), add_special_tokens=False).input_ids
    libs: list[Lib] = [XGrammar(), LLGuidance(), OutlinesCore()]
    rows: dict[str, dict[str, Any]] = {}
    for lib in libs:
        try:
            start = time.perf_counter()
            lib.setup(tokenizer, vocab, eos)
            setup_s = time.perf_counter() - start
        except ImportError as exc:
            print(f"{lib.name}: not installed ({exc})")
            continue
        info: dict[str, Any] = {"setup_s": setup_s}
        info["coverage"] = coverage(lib, tokenizer, eos, words)
        grammar = lib.compile(bench_schema)
        for batch in (8, 32):
            info[f"mask_ms_b{batch}"] = mask_cost(lib, grammar, bench_tokens, batch, words, args.steps, args.repeats)
        info["threads"] = thread_safety(lib, grammar, bench_tokens, eos, words)
        info["size_mb"], info["requires"] = package_info(lib.package)
        rows[lib.name] = info
        print(f"{lib.name}: done", flush=True)

    names = list(rows)
    print("\n| | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for schema_name in SCHEMAS:
        cells = []
        for n in names:
            verdict, seconds = rows[n]["coverage"][schema_name]
            cells.append(f"{verdict} ({seconds * 1e3:.0f} ms)" if seconds == seconds else verdict)
        print(f"| {schema_name} (compile) | " + " | ".join(cells) + " |")
    print("| tokenizer set-up | " + " | ".join(f"{rows[n]['setup_s']:.2f} s" for n in names) + " |")
    for batch in (8, 32):
        print(
            f"| mask + advance, batch {batch} (ms/step) | "
            + " | ".join(f"{rows[n][f'mask_ms_b{batch}']:.2f}" for n in names)
            + " |"
        )
    print("| thread safety | " + " | ".join(rows[n]["threads"] for n in names) + " |")
    print("| installed size (MB) | " + " | ".join(f"{rows[n]['size_mb']:.1f}" for n in names) + " |")
    print("| declared dependencies | " + " | ".join(", ".join(rows[n]["requires"]) or "none" for n in names) + " |")


if __name__ == "__main__":
    main()
