"""Prompts for load runs and benchmarks: a reward file's prompts, or a built-in set."""

from __future__ import annotations

import json
from pathlib import Path

# ~50 varied prompts (short and long, code, maths, multiple choice, chat) for runs without a
# reward file: the locust users, `paretoserve loadtest chaos`, the benchmarks' fallback.
BUILTIN_PROMPTS = [
    "What is the capital of France?",
    "hi",
    "Write a python function to reverse a linked list in place.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether in April and May?",
    "Which of the following is a characteristic of a stationary process? (A) constant mean "
    "(B) a unit root (C) a deterministic trend (D) explosive variance",
    "Translate 'good morning, how did you sleep?' into Japanese and explain the politeness level.",
    "Summarise the causes of the First World War in three sentences.",
    "Prove that the square root of 2 is irrational.",
    "Explain the difference between TCP and UDP to a ten-year-old.",
    "Write a SQL query that returns the second highest salary from an employees table.",
    "What are the side effects of ibuprofen?",
    "Compose a haiku about autumn rain on a tin roof.",
    "Given an array of integers, return indices of the two numbers that add up to a target.",
    "What is the derivative of x^3 * sin(x)?",
    "Draft a polite email declining a meeting invitation because of a scheduling conflict.",
    "How does a transformer's self-attention scale with sequence length, and why?",
    "List five tips for improving sleep quality.",
    "What year did the Berlin Wall fall?",
    "Explain gradient descent with momentum and when it helps.",
    "Write a bash one-liner that counts the lines of all .py files in a directory tree.",
    "Is a tomato a fruit or a vegetable? Justify your answer.",
    "Describe the water cycle.",
    "A train leaves at 3pm travelling 60 mph; another leaves at 4pm at 80 mph. When does the "
    "second catch up?",
    "What is the time complexity of heapsort, and is it stable?",
    "Give me a recipe for a vegetarian lasagna for six people.",
    "Explain what a p-value is and a common way it is misinterpreted.",
    "Write a regular expression that matches a valid IPv4 address.",
    "Who wrote 'One Hundred Years of Solitude', and what is magical realism?",
    "Convert 72 degrees Fahrenheit to Celsius.",
    "What are the main differences between Python lists and tuples?",
    "Explain the CAP theorem with an example of each trade-off.",
    "Write a short story opening set on a generation ship, in the second person.",
    "What does the Fed funds rate influence in the economy?",
    "How do vaccines train the immune system?",
    "Implement binary search in Rust and explain the off-by-one pitfalls.",
    "Which of these is Ohm's law? (A) V = IR (B) P = IV (C) F = ma (D) E = mc^2",
    "Outline a 30-minute beginner bodyweight workout.",
    "What is the difference between a virus and a bacterium?",
    "Write unit tests in pytest for a function that parses ISO 8601 dates.",
    "Why is the sky blue?",
    "Explain the Monty Hall problem and why switching is better.",
    "Write a limerick about a cat who learns to code.",
    "What causes inflation, according to monetarist and Keynesian views?",
    "Describe how public-key cryptography lets two strangers share a secret.",
    "In Kubernetes, what is the difference between a Deployment and a StatefulSet?",
    "Find all real solutions of x^4 - 5x^2 + 4 = 0.",
    "Suggest names for a bakery that specialises in sourdough.",
    "What is the role of mitochondria in a cell?",
    "Explain the rules of chess castling, including when it is not allowed.",
    "Rewrite this sentence in the passive voice: 'The committee approved the budget.'",
    ("Here is a long document to summarise. " + "The quarterly results were mixed. " * 60),
]


def reward_file_prompts(path: str | Path) -> list[str]:
    """The non-blank `prompt` of every line of a reward file (.jsonl), in file order."""
    prompts = []
    # split on "\n" only: prompts may hold U+2028 and friends, which splitlines() splits on
    for line in Path(path).read_text(encoding="utf-8").split("\n"):
        if line.strip():
            text = json.loads(line).get("prompt", "")
            if isinstance(text, str) and text.strip():
                prompts.append(text)
    return prompts


def load_prompts(path: str | Path | None) -> list[str]:
    """A reward file's prompts (`reward_file_prompts`); the built-in set without a path."""
    if not path:
        return list(BUILTIN_PROMPTS)
    prompts = reward_file_prompts(path)
    if not prompts:
        raise ValueError(f"no prompts in {path}")
    return prompts
