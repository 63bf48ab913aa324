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
    ("What is the weather in Paris right now?", "get_weather"),
    ("What's the weather like in Tokyo today?", "get_weather"),
    ("Tell me the current weather in Nairobi.", "get_weather"),
    ("Is the weather in London good for a walk right now?", "get_weather"),
    ("Check the weather in Buenos Aires.", "get_weather"),
    ("What is 12 times 7?", "multiply"),
    ("Multiply 3.5 by 8.", "multiply"),
    ("What is 123 multiplied by 45?", "multiply"),
    ("Compute 19 times 21.", "multiply"),
    ("How much is 250 times 4?", "multiply"),
    ("Convert 100 USD to EUR.", "convert_currency"),
    ("How many yen is 50 dollars? Convert 50 USD to JPY.", "convert_currency"),
    ("Convert 20 GBP to USD.", "convert_currency"),
    ("What is 75 EUR in CHF? Convert the currency.", "convert_currency"),
    ("Convert 1000 INR to USD.", "convert_currency"),
    ("Search Wikipedia for the Eiffel Tower.", "search_wikipedia"),
    ("Look up Marie Curie on Wikipedia.", "search_wikipedia"),
    ("Find the Wikipedia article about photosynthesis.", "search_wikipedia"),
    ("Search Wikipedia for the history of the Roman Empire.", "search_wikipedia"),
    ("What does Wikipedia say about black holes? Search it.", "search_wikipedia"),
]

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
    right = wrong = 0
    for question, expected in NEEDS_TOOL:
        msg = llm.invoke(question)
        names = [c["name"] for c in msg.tool_calls]
        if expected in names:
            right += 1
        elif names or msg.invalid_tool_calls:
            wrong += 1
        print(f"needs {expected:17s} -> calls {[(c['name'], c['args']) for c in msg.tool_calls]}", flush=True)
    false_calls = 0
    for question in NO_TOOL:
        msg = llm.invoke(question)
        false_calls += bool(msg.tool_calls)
        print(f"needs none -> calls {[(c['name'], c['args']) for c in msg.tool_calls]}", flush=True)
    seconds = time.perf_counter() - start
    print("\n| | right tool called | wrong/invalid call | calls on no-tool questions | time |")
    print("|---|---|---|---|---|")
    print(f"| this run | {right}/{len(NEEDS_TOOL)} | {wrong} | {false_calls}/{len(NO_TOOL)} | {seconds:.0f} s |")


if __name__ == "__main__":
    main()
