"""What keeping thinking apart costs per generated token
(``python -m bench.reasoning_split``): the ``<think>`` and harmony splitters fed a
10,000-piece reply (5,000 thinking words, then 5,000 answer words), best of 5.
No model: the figure is the Python work added to each token on the service side."""

from __future__ import annotations

import time

from mlxhost.families.reasoning.split import HarmonySplitter, TagSplitter

WORDS = ("The user asks about rain . I should answer briefly and clearly , then stop . " * 400).split()[:5000]


def _pieces(opening: list[str], middle: list[str]) -> list[str]:
    return [*opening, *(w + " " for w in WORDS), *middle, *(w + " " for w in WORDS)]


def per_piece_us(make, pieces: list[str], rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        splitter = make()
        started = time.perf_counter()
        for piece in pieces:
            splitter.feed(piece)
        splitter.finish()
        best = min(best, time.perf_counter() - started)
    return best * 1e6 / len(pieces)


def main() -> None:
    cases = {
        "<think> tags": (lambda: TagSplitter("<think>", "</think>"),
                         _pieces(["<think>", "\n"], ["</think>", "\n\n"])),
        "harmony": (HarmonySplitter, _pieces(
            ["<|channel|>", "analysis", "<|message|>"],
            ["<|end|>", "<|start|>", "assistant", "<|channel|>", "final", "<|message|>"])),
    }
    for name, (make, pieces) in cases.items():
        print(f"{name}: {len(pieces)} pieces, {per_piece_us(make, pieces):.2f} us per piece")


if __name__ == "__main__":
    main()
