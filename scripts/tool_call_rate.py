"""How often the default model calls a tool under tool_choice="auto" (issue 9).

20 questions that plainly need one of the bound tools, and 10 that need none. For each, one
``bind_tools(TOOLS).invoke(question)`` (tool_choice left to the model) on the default model;
a question counts as "called" when the reply holds a valid call of the right tool, as "wrong"
when it calls another tool or its call is invalid. Only public API is used, so the same script
measures another checkout (``PYTHONPATH=/path/to/checkout``), e.g. the code before issue 9:

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/tool_call_rate.py                       # this checkout
    OMP_NUM_THREADS=1 PYTHONPATH=/path/to/old/checkout python scripts/tool_call_rate.py
"""

from __future__ import annotations

import argparse
import time

import torch
from langchain_core.tools import tool

import langchain_aisp
from langchain_aisp import AISPChatModel


@tool
def get_weather(location: str) -> str:
    """Get the current weather at a location."""
    return "sunny"


@tool
def multiply(a: float, b: float) -> float:
    """Multiply two numbers."""
    return a * b


@tool
def convert_currency(amount: float, from_currency: str, to_currency: str) -> float:
    """Convert an amount of money from one currency to another."""
    return amount


@tool
def search_wikipedia(query: str) -> str:
    """Search Wikipedia for an article about a topic."""
    return "..."


TOOLS = [get_weather, multiply, convert_currency, search_wikipedia]

NEEDS_TOOL = [
    # (question, the tool it needs, the arguments that answer it: strings compared case-insensitively as
    # substrings of the value, numbers exactly, multiply's factors in any order)
    ("What is the weather in Paris right now?", "get_weather", {"location": "Paris"}),
    ("What's the weather like in Tokyo today?", "get_weather", {"location": "Tokyo"}),
    ("Tell me the current weather in Nairobi.", "get_weather", {"location": "Nairobi"}),
    ("Is the weather in London good for a walk right now?", "get_weather", {"location": "London"}),
    ("Check the weather in Buenos Aires.", "get_weather", {"location": "Buenos Aires"}),
    ("What is 12 times 7?", "multiply", {"a": 12, "b": 7}),
    ("Multiply 3.5 by 8.", "multiply", {"a": 3.5, "b": 8}),
    ("What is 123 multiplied by 45?", "multiply", {"a": 123, "b": 45}),
    ("Compute 19 times 21.", "multiply", {"a": 19, "b": 21}),
    ("How much is 250 times 4?", "multiply", {"a": 250, "b": 4}),
    ("Convert 100 USD to EUR.", "convert_currency", {"amount": 100, "from_currency": "USD", "to_currency": "EUR"}),
    (
        "How many yen is 50 dollars? Convert 50 USD to JPY.",
        "convert_currency",
        {"amount": 50, "from_currency": "USD", "to_currency": "JPY"},
    ),
    ("Convert 20 GBP to USD.", "convert_currency", {"amount": 20, "from_currency": "GBP", "to_currency": "USD"}),
    (
        "What is 75 EUR in CHF? Convert the currency.",
        "convert_currency",
        {"amount": 75, "from_currency": "EUR", "to_currency": "CHF"},
    ),
    ("Convert 1000 INR to USD.", "convert_currency", {"amount": 1000, "from_currency": "INR", "to_currency": "USD"}),
    ("Search Wikipedia for the Eiffel Tower.", "search_wikipedia", {"query": "Eiffel Tower"}),
    ("Look up Marie Curie on Wikipedia.", "search_wikipedia", {"query": "Marie Curie"}),
    ("Find the Wikipedia article about photosynthesis.", "search_wikipedia", {"query": "photosynthesis"}),
    ("Search Wikipedia for the history of the Roman Empire.", "search_wikipedia", {"query": "Roman Empire"}),
    ("What does Wikipedia say about black holes? Search it.", "search_wikipedia", {"query": "black holes"}),
]


def args_right(name: str, got: dict, expected: dict) -> bool:
    if name == "multiply":
        return sorted([got.get("a"), got.get("b")], key=str) == sorted(expected.values(), key=str)
    for key, want in expected.items():
        value = got.get(key)
        if isinstance(want, str):
            if not (isinstance(value, str) and want.lower() in value.lower()) or (
                key.endswith("currency") and value.strip().upper() != want
            ):
                return False
        elif value != want:
            return False
    return True


NO_TOOL = [
    "Hello! How are you?",
    "Write a haiku about autumn.",
    "Thank you, that was helpful.",
    "What is your name?",
    "Tell me a joke.",
    "Say something nice.",
    "Good morning!",
    "Can you write a short poem about the sea?",
    "What do you like to do?",
    "Give me a motivational quote.",
]


def wordy(prompt: str, response: str) -> float:
    return min(len(response.split()), 20) / 20.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("langchain_aisp from", langchain_aisp.__file__)
    llm = AISPChatModel(
        reward=wordy, num_samples=args.num_samples, num_iterations=1, max_tokens=args.max_tokens, seed=0
    ).bind_tools(TOOLS)
    start = time.perf_counter()
    right = wrong = exact = 0
    for question, expected, expected_args in NEEDS_TOOL:
        msg = llm.invoke(question)
        names = [c["name"] for c in msg.tool_calls]
        if expected in names:
            right += 1
            exact += args_right(expected, msg.tool_calls[names.index(expected)]["args"], expected_args)
        elif names or msg.invalid_tool_calls:
            wrong += 1
        print(f"needs {expected:17s} -> calls {[(c['name'], c['args']) for c in msg.tool_calls]}", flush=True)
    false_calls = 0
    for question in NO_TOOL:
        msg = llm.invoke(question)
        false_calls += bool(msg.tool_calls)
        print(f"needs none -> calls {[(c['name'], c['args']) for c in msg.tool_calls]}", flush=True)
    seconds = time.perf_counter() - start
    print(
        "\n| | right tool called | ...with the right arguments | wrong/invalid call | calls when none needed | time |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| this run | {right}/{len(NEEDS_TOOL)} | {exact}/{len(NEEDS_TOOL)} | {wrong} | "
        f"{false_calls}/{len(NO_TOOL)} | {seconds:.0f} s |"
    )


if __name__ == "__main__":
    main()
