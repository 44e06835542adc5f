"""Fitting a long conversation into the context window by summarizing older turns.

Policy: keep every system message and the last ``KEEP_LAST`` messages verbatim;
replace the messages in between with one summary written by the loaded model,
appended to the leading system message so the prompt prefix stays stable for
the KV cache. Material too large for one summarization prompt is summarized in
chunks, and the chunk summaries are joined (and summarized again if needed).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

log = logging.getLogger(__name__)

KEEP_LAST = 6
SUMMARY_HEADER = "Summary of the earlier part of this conversation:"
SUMMARY_INSTRUCTIONS = (
    "You summarize conversations. Write a concise summary of the conversation "
    "below: the facts, decisions, names, numbers, open questions and results of "
    "tool calls that a reader needs to continue it. Do not add anything new. "
    "Reply with the summary only."
)
SYSTEM_ROLES = ("system", "developer")

# (messages) -> prompt tokens, with the model's template.
CountTokens = Callable[[list[dict[str, Any]]], Awaitable[int]]
# (messages, max_tokens) -> generated text.
Generate = Callable[[list[dict[str, Any]], int], Awaitable[str]]
# (text, max_tokens) -> text cut to at most max_tokens tokens.
TruncateText = Callable[[str, int], Awaitable[str]]


@attrs.frozen
class Split:
    system: list[dict[str, Any]]
    older: list[dict[str, Any]]
    kept: list[dict[str, Any]]


def split_conversation(messages: list[dict[str, Any]], keep_last: int = KEEP_LAST) -> Split:
    """System messages (all of them), the older turns to summarize, the last ``keep_last``."""
    cut = max(len(messages) - keep_last, 0)
    head, kept = messages[:cut], messages[cut:]
    system = [m for m in head if m["role"] in SYSTEM_ROLES]
    older = [m for m in head if m["role"] not in SYSTEM_ROLES]
    return Split(system=system, older=older, kept=kept)


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    pieces = []
    for part in content:
        if part.get("type") == "text":
            pieces.append(part.get("text", ""))
        elif part.get("type") in ("image_url", "image"):
            pieces.append("[image]")
    return " ".join(p for p in pieces if p)


def message_as_text(message: dict[str, Any]) -> str:
    """One message as a transcript line: tool calls and results as text, images mentioned."""
    role = message["role"]
    text = _text_of(message.get("content"))
    if role == "tool":
        return f"Tool result ({message.get('tool_call_id', '')}): {text}"
    if role == "assistant":
        lines = [f"Assistant: {text}"] if text else []
        for call in message.get("tool_calls") or []:
            function = call.get("function", {})
            lines.append(f"Assistant called {function.get('name')}({function.get('arguments', '')})")
        return "\n".join(lines) or "Assistant:"
    if role in SYSTEM_ROLES:
        return f"System: {text}"
    return f"User: {text}"


def with_summary(
    system: list[dict[str, Any]], summary: str, kept: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The compressed conversation: system messages, the summary right after them, then ``kept``.

    The summary joins the last system message (templates such as Qwen's render
    only a leading system message), or becomes the system message if there is none.
    """
    note = f"{SUMMARY_HEADER}\n{summary.strip()}"
    if not system:
        return [{"role": "system", "content": note}, *kept]
    *earlier, last = system
    merged = {**last, "content": f"{_text_of(last.get('content'))}\n\n{note}"}
    return [*earlier, merged, *kept]


class Summarizer:
    """Summarizes older turns with the loaded model, in chunks when they do not fit."""

    def __init__(
        self,
        *,
        count_tokens: CountTokens,
        generate: Generate,
        truncate: TruncateText,
        context_window: int,
        summary_tokens: int = 256,
    ) -> None:
        self._count = count_tokens
        self._generate = generate
        self._truncate = truncate
        self._window = context_window
        self._summary_tokens = min(summary_tokens, max(context_window // 8, 16))

    def _prompt(self, transcript: str) -> list[dict[str, Any]]:
        return [
            {"role": "system", "content": SUMMARY_INSTRUCTIONS},
            {"role": "user", "content": f"Conversation:\n\n{transcript}"},
        ]

    async def _fits(self, transcript: str) -> bool:
        tokens = await self._count(self._prompt(transcript))
        return tokens + self._summary_tokens <= self._window

    async def summarize(self, older: list[dict[str, Any]]) -> str:
        blocks = [message_as_text(m) for m in older]
        return await self._summarize_blocks(blocks, depth=0)

    async def _summarize_blocks(self, blocks: list[str], depth: int) -> str:
        transcript = "\n\n".join(blocks)
        if await self._fits(transcript):
            return await self._generate(self._prompt(transcript), self._summary_tokens)
        chunks = await self._chunk(blocks)
        log.info("Summarizing %d messages in %d chunks", len(blocks), len(chunks))
        partials = [
            await self._generate(self._prompt("\n\n".join(chunk)), self._summary_tokens)
            for chunk in chunks
        ]
        if depth >= 3:  # summaries that still do not fit: keep what fits
            return await self._truncate("\n".join(partials), self._summary_tokens)
        return await self._summarize_blocks(partials, depth + 1)

    async def _chunk(self, blocks: list[str]) -> list[list[str]]:
        """Greedy packing of transcript blocks into prompts that fit; a block too
        big alone is cut to the room a chunk has."""
        overhead = await self._count(self._prompt(""))
        room = max(self._window - overhead - self._summary_tokens, 16)
        chunks: list[list[str]] = []
        current: list[str] = []
        for block in blocks:
            if not await self._fits(block):
                block = await self._truncate(block, room)
            if current and not await self._fits("\n\n".join([*current, block])):
                chunks.append(current)
                current = []
            current.append(block)
        if current:
            chunks.append(current)
        return chunks


def count_images(messages: list[dict[str, Any]]) -> int:
    """Image parts left in a conversation (summarized turns mention theirs as text)."""
    return sum(
        1
        for m in messages
        if isinstance(m.get("content"), list)
        for part in m["content"]
        if part.get("type") in ("image_url", "image")
    )


def describe(messages: list[dict[str, Any]]) -> str:
    """Short description for logs."""
    return json.dumps([m["role"] for m in messages])
