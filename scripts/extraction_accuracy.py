"""Field accuracy of structured extraction on the default model (issues 21 and 26).

Two sets. ``scripts/extraction_set.json`` (issue 21): 30 prompts (names, numbers, dates, places, non-Latin
scripts) over the six schemas defined below, each through ``with_structured_output(schema, method=...)``.
``scripts/extraction_heldout.json`` (issue 26, ``--set``): 55 prompts in 15 languages, written before the
name rule changed and used only to measure it; the file holds its own JSON schemas and says how each is
bound (``with_structured_output(schema, method=...)`` or ``bind_tools([schema], tool_choice=name)``, the
first call's arguments). One batch per schema on the default model, at the chat model's defaults unless
the budget is given (Best-of-32 at temperature 0.7, ``max_tokens=128``), the standard suite's ``wordy``
reward (it ignores the values), seed 0. Every field is scored against its expected value(s): strings after
light normalisation (Unicode NFKC, case, punctuation and whitespace), numbers exactly. Only public API
is used, so the same script measures another checkout (``PYTHONPATH=/path/to/checkout``):

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/extraction_accuracy.py --num-samples 4 --max-tokens 64
    OMP_NUM_THREADS=1 PYTHONPATH=/path/to/old/checkout python scripts/extraction_accuracy.py   # before
    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/extraction_accuracy.py --grounding-weight 0   # grounding off
    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/extraction_accuracy.py --set scripts/extraction_heldout.json
"""

from __future__ import annotations

import argparse
import json
import re
import time
import unicodedata
from pathlib import Path
from typing import Any

import torch
from langchain_core.messages import AIMessage
from pydantic import BaseModel, Field
from tool_call_rate import wordy  # the standard suite's reward (same folder)

import langchain_aisp
from langchain_aisp import AISPChatModel
from langchain_aisp.engine.config import AISPParams

SET = Path(__file__).with_name("extraction_set.json")


class Person(BaseModel):
    """A person mentioned in the text."""

    name: str = Field(description="The person's full name")
    age: int = Field(description="The person's age in years")
    city: str = Field(description="The city where the person lives")


class Order(BaseModel):
    """A customer's order."""

    customer: str = Field(description="Name of the customer")
    product: str = Field(description="What was ordered")
    quantity: int = Field(description="How many items")
    unit_price: float = Field(description="Price of one item")


class Meeting(BaseModel):
    """A meeting to schedule."""

    person: str = Field(description="Who the meeting is with")
    date: str = Field(description="The date of the meeting, as written")
    place: str = Field(description="Where the meeting takes place")


class Flight(BaseModel):
    """A flight to book."""

    origin: str = Field(description="City of departure")
    destination: str = Field(description="City of arrival")
    date: str = Field(description="Date of departure, as written")


class Company(BaseModel):
    """A company record."""

    company_name: str = Field(description="The company's name")
    country: str = Field(description="The company's country")
    employees: int = Field(description="Number of employees")


class Product(BaseModel):
    """A product listing."""

    product_name: str = Field(description="The product's name")
    price: float = Field(description="The price")
    weight_grams: int = Field(description="The weight in grams")


SCHEMAS: dict[str, type[BaseModel]] = {s.__name__: s for s in (Person, Order, Meeting, Flight, Company, Product)}
KINDS = {
    "name": ("name", "customer", "person", "company_name", "product_name", "product"),
    "number": ("age", "quantity", "unit_price", "employees", "price", "weight_grams"),
    "date": ("date",),
    "place": ("city", "place", "origin", "destination", "country"),
}


def norm(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(c).startswith(("P", "S")) else c for c in text)
    return " ".join(text.split())


def field_right(got: Any, expected: Any) -> bool:
    if isinstance(expected, list):
        return any(field_right(got, e) for e in expected)
    if isinstance(expected, str):
        return isinstance(got, str) and norm(got) == norm(expected)
    return isinstance(got, (int, float)) and not isinstance(got, bool) and float(got) == float(expected)


def non_latin(text: str) -> bool:
    return bool(re.search(r"[^\x00-\u024f\s\d\W]", text))


def load_set(path: Path, method: str) -> tuple[list[dict[str, Any]], dict[str, tuple[str, Any, str]]]:
    """The cases of a set and its schemas: name -> (``"structured"`` or ``"tool"``, schema, method). The
    issue-21 set is a list of cases over :data:`SCHEMAS`; a held-out set is ``{"schemas": ..., "cases": ...}``."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, list):
        return data, {name: ("structured", schema, method) for name, schema in SCHEMAS.items()}
    return data["cases"], {
        name: (spec["via"], spec["schema"], spec.get("method", method)) for name, spec in data["schemas"].items()
    }


def extract(llm: AISPChatModel, via: str, schema: Any, method: str, prompts: list[str]) -> list[dict[str, Any] | Any]:
    """The fields each prompt's reply gives (a dict), or the error it raised."""
    if via == "tool":
        name = schema["title"] if isinstance(schema, dict) else schema.__name__
        replies = llm.bind_tools([schema], tool_choice=name).batch(prompts, return_exceptions=True)
        return [r.tool_calls[0]["args"] if isinstance(r, AIMessage) and r.tool_calls else r for r in replies]
    outputs = llm.with_structured_output(schema, method=method).batch(prompts, return_exceptions=True)
    return [o.model_dump() if isinstance(o, BaseModel) else o for o in outputs]


def report(rows: list[dict[str, Any]], cases: list[dict[str, Any]], seconds: float) -> None:
    right = sum(r["ok"] for r in rows)
    per_call = seconds / len(cases)
    print(f"\nfield accuracy: {right}/{len(rows)} = {right / len(rows):.3f}  ({seconds:.0f} s, {per_call:.1f} s/call)")
    groups = KINDS if all(r["field"] in sum(KINDS.values(), ()) for r in rows) else {}
    groups = groups or {f: (f,) for f in dict.fromkeys(r["field"] for r in rows)}
    for kind, fields in groups.items():
        sel = [r for r in rows if r["field"] in fields]
        print(f"  {kind:14s} {sum(r['ok'] for r in sel)}/{len(sel)}")
    langs = dict.fromkeys(r["lang"] for r in rows if r["lang"])
    if langs:
        print("  by language: " + ", ".join(f"{lang} {_share(rows, 'lang', lang)}" for lang in langs))
    sel = [r for r in rows if non_latin(r["prompt"])]
    print(f"  non-Latin prompts {sum(r['ok'] for r in sel)}/{len(sel)}")
    sel_calls = {r["prompt"] for r in rows}
    full = sum(all(r["ok"] for r in rows if r["prompt"] == p) for p in sel_calls)
    print(f"  prompts with every field right {full}/{len(sel_calls)}")


def _share(rows: list[dict[str, Any]], key: str, value: Any) -> str:
    sel = [r for r in rows if r[key] == value]
    return f"{sum(r['ok'] for r in sel)}/{len(sel)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", type=Path, default=SET, help="the extraction set (default: %(default)s)")
    parser.add_argument("--num-samples", type=int, help="default: the chat model's (Best-of-32)")
    parser.add_argument("--num-iterations", type=int, help="default: the chat model's (1 for Best-of-N)")
    parser.add_argument("--max-tokens", type=int, help="default: the chat model's (128)")
    parser.add_argument("--method", default="function_calling", choices=["function_calling", "json_schema"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grounding-weight", type=float, help="the chat model's grounding_weight (0: no grounding)")
    parser.add_argument("--json", type=Path, help="also write the per-field results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("langchain_aisp from", langchain_aisp.__file__)
    cases, schemas = load_set(args.set, args.method)
    given = {k: getattr(args, k) for k in ("num_samples", "num_iterations", "max_tokens", "grounding_weight")}
    llm = AISPChatModel(reward=wordy, seed=args.seed, **{k: v for k, v in given.items() if v is not None})
    params = AISPParams(method=llm.method, num_samples=llm.num_samples, num_iterations=llm.num_iterations)
    budget = f"{params.method} {params.num_samples}x{params.num_iterations}"
    print(
        f"set {args.set} ({len(cases)} prompts); {budget}, temperature {llm.temperature}, max_tokens {llm.max_tokens}"
    )
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for name, (via, schema, method) in schemas.items():
        mine = [case for case in cases if case["schema"] == name]
        outputs = extract(llm, via, schema, method, [case["prompt"] for case in mine]) if mine else []
        for case, out in zip(mine, outputs, strict=True):
            got = out if isinstance(out, dict) else {}
            for key, expected in case["expected"].items():
                ok = field_right(got.get(key), expected)
                row = {"prompt": case["prompt"], "lang": case.get("lang"), "field": key, "got": got.get(key)}
                rows.append({**row, "expected": expected, "ok": ok})
            print(f"{name:16s} {case['prompt'][:60]!r:64s} -> {got or repr(out)[:80]}", flush=True)
    report(rows, cases, time.perf_counter() - start)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
