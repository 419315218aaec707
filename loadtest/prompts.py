"""Prompts for load runs: a reward file's prompts, or a small built-in set."""

from __future__ import annotations

import json
from pathlib import Path

BUILTIN_PROMPTS = [
    "What is the capital of Australia?",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Explain the difference between a process and a thread in two sentences.",
    "If a train travels 120 km in 1.5 hours, what is its average speed?",
    "Summarise the causes of the First World War in one paragraph.",
    "Which is heavier, a kilogram of feathers or a kilogram of steel? Explain.",
    "Translate 'good morning, how are you?' into French and Spanish.",
    "Give three tips for writing clear technical documentation.",
]


def load_prompts(path: str | Path | None) -> list[str]:
    """The `prompt` of every line of a reward file (.jsonl); the built-in set without a path."""
    if not path:
        return list(BUILTIN_PROMPTS)
    with open(path, encoding="utf-8") as f:
        prompts = [json.loads(line)["prompt"] for line in f if line.strip()]
    if not prompts:
        raise ValueError(f"no prompts in {path}")
    return prompts
