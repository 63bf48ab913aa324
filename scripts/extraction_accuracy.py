"""Field accuracy of structured extraction on the default model (issue 21).

30 prompts (``scripts/extraction_set.json``: names, numbers, dates, places, non-Latin scripts) over six
schemas, each through ``with_structured_output(schema, method=...)`` on the default model, one Batched
AISP run per schema. Every field is scored against its expected value(s): strings after light
normalisation (Unicode NFKC, case, punctuation and whitespace), numbers exactly. Only public API
is used, so the same script measures another checkout (``PYTHONPATH=/path/to/checkout``):

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/extraction_accuracy.py
    OMP_NUM_THREADS=1 PYTHONPATH=/path/to/old/checkout python scripts/extraction_accuracy.py   # before
    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/extraction_accuracy.py --grounding-weight 0   # grounding off
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
from pydantic import BaseModel, Field
from tool_call_rate import wordy  # the standard suite's reward (same folder)

import langchain_aisp
from langchain_aisp import AISPChatModel

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--num-iterations", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--method", default="function_calling", choices=["function_calling", "json_schema"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grounding-weight", type=float, help="the chat model's grounding_weight (0: no grounding)")
    parser.add_argument("--json", type=Path, help="also write the per-field results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("langchain_aisp from", langchain_aisp.__file__)
    items = json.loads(SET.read_text(encoding="utf-8"))
    llm = AISPChatModel(
        reward=wordy,
        num_samples=args.num_samples,
        num_iterations=args.num_iterations,
        max_tokens=args.max_tokens,
        seed=args.seed,
        **({} if args.grounding_weight is None else {"grounding_weight": args.grounding_weight}),
    )
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for name, schema in SCHEMAS.items():
        mine = [item for item in items if item["schema"] == name]
        chain = llm.with_structured_output(schema, method=args.method)
        outputs = chain.batch([item["prompt"] for item in mine], return_exceptions=True)
        for item, out in zip(mine, outputs, strict=True):
            got = out.model_dump() if isinstance(out, BaseModel) else {}
            for key, expected in item["expected"].items():
                ok = field_right(got.get(key), expected)
                rows.append({"prompt": item["prompt"], "field": key, "got": got.get(key), "ok": ok})
            print(f"{name:8s} {item['prompt'][:60]!r:64s} -> {got or repr(out)[:80]}", flush=True)
    seconds = time.perf_counter() - start
    right = sum(r["ok"] for r in rows)
    per_call = seconds / len(items)
    print(f"\nfield accuracy: {right}/{len(rows)} = {right / len(rows):.3f}  ({seconds:.0f} s, {per_call:.1f} s/call)")
    for kind, fields in KINDS.items():
        sel = [r for r in rows if r["field"] in fields]
        print(f"  {kind:7s} {sum(r['ok'] for r in sel)}/{len(sel)}")
    sel = [r for r in rows if non_latin(r["prompt"])]
    print(f"  non-Latin prompts {sum(r['ok'] for r in sel)}/{len(sel)}")
    sel_calls = {r["prompt"] for r in rows}
    full = sum(all(r["ok"] for r in rows if r["prompt"] == p) for p in sel_calls)
    print(f"  prompts with every field right {full}/{len(sel_calls)}")
    if args.json:
        args.json.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
