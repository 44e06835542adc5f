"""Thinking apart from the answer: pure text state machines fed generated text.

A :class:`ReplySplitter` is fed the text of each generated token, in whatever
pieces the detokenizer hands out, and returns :class:`ReasoningDelta` (thinking),
``ContentDelta`` (answer text, which the service then runs through stop strings
and the tool-call parser) and, for harmony, ``ToolCallEvent`` (a call on the
commentary channel). Text that might be the start of a marker is held until the
next piece decides it, so a marker split across pieces never leaks.

- :class:`TagSplitter`: ``<think>`` … ``</think>`` and the like. ``inside``: the
  prompt opened the block (Qwen3 thinking templates), so the reply starts in it.
- :class:`HarmonySplitter`: gpt-oss's channels. ``analysis`` is thinking,
  ``final`` (and a ``commentary`` preamble) the answer, a message to
  ``functions.NAME`` a tool call.

Nothing here imports a model or a tokenizer.
"""

from __future__ import annotations

import json
import re
from typing import Protocol

from mlxhost.core.types import (
    ContentDelta,
    GenerationEvent,
    ReasoningDelta,
    ToolCall,
    ToolCallEvent,
)
from mlxhost.families.toolcalls import new_call_id


class ReplySplitter(Protocol):
    # True while the text fed last ended inside a thought.
    thinking: bool

    def feed(self, text: str) -> list[GenerationEvent]: ...

    def finish(self) -> list[GenerationEvent]: ...


def _partial(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a marker."""
    best = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), best, -1):
            if marker.startswith(text[-size:]):
                best = size
                break
    return best


def merge(events: list[GenerationEvent]) -> list[GenerationEvent]:
    """Neighbouring deltas of one kind joined, empty ones dropped (how a
    non-streaming response sees them)."""
    out: list[GenerationEvent] = []
    for event in events:
        if isinstance(event, (ContentDelta, ReasoningDelta)):
            if not event.text:
                continue
            if out and type(out[-1]) is type(event):
                out[-1] = type(event)(out[-1].text + event.text)
                continue
        out.append(event)
    return out


class TagSplitter:
    """``start`` … ``end`` is thinking, the rest the answer.

    Whitespace next to the markers is dropped (the newline after ``<think>``,
    before ``</think>``, and the blank line the answer starts with), as Ollama
    and vLLM do. A thought may open more than once.
    """

    def __init__(self, start: str, end: str, *, inside: bool = False) -> None:
        self._start, self._end = start, end
        self.thinking = inside
        self._pending = ""
        # Drop whitespace at the start of the next thought / answer text (a reply
        # that starts as answer keeps its leading whitespace).
        self._trim = inside

    def feed(self, text: str) -> list[GenerationEvent]:
        self._pending += text
        out: list[GenerationEvent] = []
        while True:
            marker = self._end if self.thinking else self._start
            if self._trim:
                self._pending = self._pending.lstrip()
                if not self._pending:
                    return out
                self._trim = False
            at = self._pending.find(marker)
            # In the answer, a stray end marker (no thought open) is dropped,
            # never content: a marker must not leak into the answer.
            stray = -1 if self.thinking else self._pending.find(self._end)
            if stray >= 0 and (at < 0 or stray < at):
                before, self._pending = self._pending[:stray], self._pending[stray + len(self._end) :]
                out.extend(self._emit(before))
                continue
            if at < 0:
                break
            before, self._pending = self._pending[:at], self._pending[at + len(marker) :]
            out.extend(self._emit(before.rstrip() if self.thinking else before))
            self.thinking = not self.thinking
            self._trim = True
        # Hold what may begin a marker (and, in a thought, trailing whitespace).
        keep = _partial(self._pending, (marker,) if self.thinking else (marker, self._end))
        body = self._pending[: len(self._pending) - keep]
        if self.thinking:
            stripped = body.rstrip()
            keep += len(body) - len(stripped)
            body = stripped
        self._pending = self._pending[len(self._pending) - keep :]
        out.extend(self._emit(body))
        return out

    def finish(self) -> list[GenerationEvent]:
        """The held text: an unterminated thought stays thinking (cut at max_tokens)."""
        rest, self._pending = self._pending, ""
        return self._emit(rest.rstrip() if self.thinking else rest)

    def _emit(self, text: str) -> list[GenerationEvent]:
        if not text:
            return []
        return [ReasoningDelta(text) if self.thinking else ContentDelta(text)]


# -- harmony ------------------------------------------------------------------
START, END, MESSAGE, CHANNEL = "<|start|>", "<|end|>", "<|message|>", "<|channel|>"
CONSTRAIN, RETURN, CALL = "<|constrain|>", "<|return|>", "<|call|>"
# What ends a message body.
_BODY_ENDS = (END, RETURN, CALL, START)
# A header longer than this without <|message|> is not harmony: it is content.
_MAX_HEADER = 512
_CHANNEL = re.compile(r"<\|channel\|>\s*([A-Za-z_]+)")
_RECIPIENT = re.compile(r"\bto=([^\s<]+)")


class HarmonySplitter:
    """gpt-oss's reply: a series of ``[<|start|>assistant]<|channel|>C[ to=R][<|constrain|>json]<|message|>BODY<|end|>``
    messages, the last ending in ``<|return|>`` (answer) or ``<|call|>`` (tool call).

    The prompt ends with ``<|start|>assistant``, so the reply opens with a header.
    ``offered``: the names of the offered functions; a call to any other name
    comes back as content (its text), never as an invented call (None: any name).
    """

    def __init__(self, offered: frozenset[str] | None = None) -> None:
        self._offered = offered
        self.thinking = False
        self._pending = ""
        self._in_body = False
        self._channel = ""
        self._recipient: str | None = None
        self._call_body: list[str] = []

    def feed(self, text: str) -> list[GenerationEvent]:
        self._pending += text
        out: list[GenerationEvent] = []
        while True:
            if not self._in_body:
                at = self._pending.find(MESSAGE)
                if at < 0:
                    if len(self._pending) > _MAX_HEADER:  # not harmony: show it
                        out.append(ContentDelta(self._pending))
                        self._pending = ""
                    return out
                self._header(self._pending[:at])
                self._pending = self._pending[at + len(MESSAGE) :]
                self._in_body = True
                continue
            ends = [(i, m) for m in _BODY_ENDS if (i := self._pending.find(m)) >= 0]
            if not ends:
                keep = _partial(self._pending, _BODY_ENDS)
                body = self._pending[: len(self._pending) - keep]
                self._pending = self._pending[len(self._pending) - keep :]
                out.extend(self._body(body))
                return out
            at, marker = min(ends)
            out.extend(self._body(self._pending[:at]))
            # <|start|> opens the next header (a model that skipped <|end|>).
            self._pending = self._pending[at if marker == START else at + len(marker) :]
            out.extend(self._close())

    def finish(self) -> list[GenerationEvent]:
        rest, self._pending = self._pending, ""
        if not self._in_body:
            header = rest.replace(START, "").strip()
            # A bare role name or channel header is harmony's framing, not content.
            if header and not _CHANNEL.search(header) and header != "assistant":
                return [ContentDelta(rest)]
            return []
        out = self._body(rest)
        if self._recipient is not None:
            # <|call|> is an end-of-sequence token: the engine stops on it without
            # its text, so a call ends here. One cut off by max_tokens (its JSON
            # unfinished) comes back as its text.
            text = "".join(self._call_body)
            try:
                json.loads(text)
            except json.JSONDecodeError:
                self._call_body, self._recipient = [], None
                out.append(ContentDelta(text))
            else:
                out.extend(self._close())
        self.thinking = False
        return out

    def _header(self, header: str) -> None:
        channel = _CHANNEL.search(header)
        self._channel = channel.group(1) if channel else "final"
        recipient = _RECIPIENT.search(header)
        self._recipient = recipient.group(1) if recipient else None
        self.thinking = self._recipient is None and self._channel == "analysis"

    def _body(self, text: str) -> list[GenerationEvent]:
        if not text:
            return []
        if self._recipient is not None:
            self._call_body.append(text)
            return []
        return [ReasoningDelta(text) if self.thinking else ContentDelta(text)]

    def _close(self) -> list[GenerationEvent]:
        out: list[GenerationEvent] = []
        if self._recipient is not None:
            body = "".join(self._call_body)
            name = self._recipient.removeprefix("functions.")
            try:
                arguments = json.dumps(json.loads(body) if body.strip() else {}, ensure_ascii=False)
            except json.JSONDecodeError:
                arguments = body  # the model's text as it wrote it (OpenAI sends a string)
            if self._offered is not None and name not in self._offered:
                out.append(ContentDelta(body))  # not an offered function: its text, as content
            else:
                out.append(ToolCallEvent(ToolCall(name=name, arguments=arguments, id=new_call_id())))
        self._in_body = False
        self._recipient = None
        self._call_body = []
        self.thinking = False
        return out
