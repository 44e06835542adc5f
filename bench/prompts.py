"""The prompts every system gets: a short one for decode, a long one for prefill.

Every run's prompt starts with its own tag (``[run 03]``) so that no server
(mlxhost's prefix cache, mlx-lm's and mlx-vlm's prompt caches) reuses the KV of
an earlier run beyond the chat template's fixed header: these are cold prompts.
Run ``i`` gets the same prompt on every system.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

Messages = list[dict[str, Any]]

SHORT_TASK = (
    "Write a Python module that implements a linked list, a stack, a queue and a binary search "
    "tree. Give every class and method a docstring, then add unit tests for all of them."
)
# (Both test models answer it with well over 128 tokens under greedy decoding, whatever the tag.)
LONG_TASK = "Summarize the notes above in three sentences."

_SUBJECTS = [
    "The engineer",
    "A small river",
    "The old library",
    "Every winter",
    "The night train",
    "A careful gardener",
    "The city council",
    "Our neighbour",
    "The mountain road",
    "A quiet student",
    "The harbour master",
    "The weather station",
    "A travelling musician",
]
_VERBS = [
    "measured",
    "remembered",
    "carried",
    "described",
    "repaired",
    "painted",
    "counted",
    "followed",
    "collected",
    "explained",
    "ignored",
    "translated",
    "protected",
]
_OBJECTS = [
    "the broken clock",
    "forty wooden boxes",
    "a map of the coast",
    "the spring flowers",
    "three letters from abroad",
    "the price of bread",
    "an unusual bird",
    "the village well",
    "a list of old recipes",
    "the first snowfall",
    "the copper bridge",
    "a faded photograph",
]
_ENDINGS = [
    "before the market opened.",
    "while the rain kept falling.",
    "for the annual report.",
    "without telling anyone.",
    "during the long holiday.",
    "as the sun went down.",
    "with surprising patience.",
    "after a long discussion.",
    "near the northern gate.",
]


def tag(run: int | str) -> str:
    return f"[run {run:02d}]" if isinstance(run, int) else f"[{run}]"


def short_messages(run: int | str) -> Messages:
    """The decode prompt: short, asks for a long answer."""
    return [{"role": "user", "content": f"{tag(run)} {SHORT_TASK}"}]


def filler(sentences: int, seed: int = 7) -> str:
    """Deterministic plain-English notes (the same text for every run and system)."""
    rng = random.Random(seed)
    lines = []
    for i in range(sentences):
        lines.append(
            f"{i + 1}. {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
            f"{rng.choice(_ENDINGS)}"
        )
    return "\n".join(lines)


def long_messages(run: int | str, sentences: int) -> Messages:
    """The prefill prompt: ``sentences`` numbered notes, then a short task."""
    return [{"role": "user", "content": f"{tag(run)} Notes:\n{filler(sentences)}\n\n{LONG_TASK}"}]


def fit_long_prompt(count_tokens: Callable[[Messages], int], target: int) -> tuple[int, int]:
    """(sentences, prompt tokens) of the longest notes prompt at or under ``target`` tokens."""
    low, high = 1, max(8, target // 4)
    while count_tokens(long_messages(0, high)) <= target:
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        if count_tokens(long_messages(0, mid)) <= target:
            low = mid
        else:
            high = mid
    return low, count_tokens(long_messages(0, low))


def chat_token_counter(model_path: Path) -> Callable[[Messages], int]:
    """Prompt tokens of a chat as the raw engine and mlxhost see it (template, then encode)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))

    def count(messages: Messages) -> int:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return len(tokenizer.encode(text, add_special_tokens=False))

    return count
