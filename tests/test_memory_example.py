"""examples/control_memory.py runs offline on the default model: learn, save, load, warm-started answer."""

from __future__ import annotations

import re

import pytest
from test_examples import run_example


@pytest.mark.model
def test_control_memory_example():
    out = run_example("control_memory.py")
    assert re.search(r"^learned: 4 updates from 4 prompts -> upbeat.safetensors$", out, re.MULTILINE), out
    assert re.search(r"^boosts: .+ \+4\.0, ", out, re.MULTILINE), out  # the top boost at full level is the strength
    assert re.search(r"^cold steered: False \(level 0.000, strength 0.00\)$", out, re.MULTILINE), out
    match = re.search(r"^warm steered: True \(level ([0-9.]+), strength ([0-9.]+)\)$", out, re.MULTILINE)
    assert match and float(match.group(1)) > 0 and float(match.group(2)) > 0, out
    assert re.search(r"^warm answer: (['\"]).+\1$", out, re.MULTILINE), out  # repr: "..." when it holds a '
