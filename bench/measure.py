"""One measurement: a streamed chat completion, timed chunk by chunk, and its statistics.

What one measurement is (the same for every system):

- the prompt is a chat (``messages``, from ``bench.prompts``); each system
  applies the model's chat template itself (servers) or we apply it exactly as
  mlxhost does (raw engine);
- greedy decoding (temperature 0), streaming;
- time to first token (TTFT): request sent -> first non-empty content chunk
  (raw engine: call started, chat template included -> first token yielded);
- decode tok/s: ``(n - 1) / (t_last - t_first)``, ``n`` the completion tokens
  from ``usage`` (else the count of content chunks), ``t_first``/``t_last`` the
  arrival times of the first and last content;
- prefill tok/s: prompt tokens / TTFT on a long (~1,500 token) prompt.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.prompts import Messages


@dataclass
class Sample:
    """One request. Times in seconds from the moment the request was sent."""

    ttft: float | None = None
    t_first: float | None = None
    t_last: float | None = None
    total: float | None = None
    completion_tokens: int = 0
    prompt_tokens: int | None = None
    chunks: int = 0
    text: str = ""
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.ttft is not None

    @property
    def decode_tps(self) -> float | None:
        n = self.completion_tokens
        if not self.ok or n < 2 or self.t_last is None or self.t_last <= self.t_first:
            return None
        return (n - 1) / (self.t_last - self.t_first)

    @property
    def prefill_tps(self) -> float | None:
        if not self.ok or not self.prompt_tokens:
            return None
        return self.prompt_tokens / self.ttft

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Sample | None:
        """The inverse of ``to_dict`` (``text`` stays cut to 200 characters)."""
        if d is None:
            return None
        return cls(**{k: v for k, v in d.items() if k not in ("decode_tps", "prefill_tps")})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["text"] = self.text[:200]
        out["decode_tps"] = self.decode_tps
        out["prefill_tps"] = self.prefill_tps
        return out


@dataclass
class Spread:
    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def min(self) -> float | None:
        return min(self.values) if self.values else None

    @property
    def max(self) -> float | None:
        return max(self.values) if self.values else None

    def fmt(self, digits: int = 1) -> str:
        """``median (min–max)``, or ``n/a``."""
        if not self.values:
            return "n/a"
        if self.n == 1:
            return f"{self.values[0]:.{digits}f}"
        return f"{self.median:.{digits}f} ({self.min:.{digits}f}–{self.max:.{digits}f})"


def fmt_s(value: float | None, digits: int = 2) -> str:
    """Seconds for a table cell ("n/a" when not measured)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def spread(values: Sequence[float | None]) -> Spread:
    return Spread([v for v in values if v is not None])


def stream_chat(
    base_url: str,
    model: str,
    messages: Messages,
    max_tokens: int,
    *,
    timeout: float = 1800.0,
) -> Sample:
    """One streaming chat completion, timed chunk by chunk (through the process's
    one HTTP client, bench/http.py: a client built per request would add its own
    construction, tens of ms of CPU, to every HTTP system's TTFT)."""
    from bench.http import client

    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sample = Sample()
    usage: dict[str, Any] | None = None
    pieces: list[str] = []
    started = time.perf_counter()
    try:
        with client().stream(
            "POST", f"{base_url}/v1/chat/completions", json=body, timeout=timeout
        ) as response:
            if response.status_code != 200:
                response.read()
                sample.error = f"HTTP {response.status_code}: {response.text[:300]}"
                return sample
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("error"):
                    sample.error = f"stream error: {json.dumps(chunk['error'])[:300]}"
                    break
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    piece = delta.get("content") or delta.get("reasoning_content") or ""
                    if piece:
                        now = time.perf_counter() - started
                        if sample.t_first is None:
                            sample.t_first = sample.ttft = now
                        sample.t_last = now
                        sample.chunks += 1
                        pieces.append(piece)
    except Exception as exc:  # a peer that dies mid-request is a result, not a crash
        sample.error = f"{type(exc).__name__}: {exc}"[:300]
    sample.total = time.perf_counter() - started
    sample.text = "".join(pieces)
    if usage:
        sample.prompt_tokens = usage.get("prompt_tokens")
        sample.completion_tokens = usage.get("completion_tokens") or sample.chunks
    else:
        sample.completion_tokens = sample.chunks
    if sample.error is None and sample.ttft is None:
        sample.error = "no content was streamed"
    return sample
