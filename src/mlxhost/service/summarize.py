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
from collections.abc import Awaitable, Callable, Sequence

import attrs

from mlxhost.core.domain import SYSTEM_ROLES, ImagePart, Message, TextPart, text_message

log = logging.getLogger(__name__)

KEEP_LAST = 6
SUMMARY_HEADER = "Summary of the earlier part of this conversation:"
SUMMARY_INSTRUCTIONS = (
    "You summarize conversations. Write a concise summary of the conversation "
    "below: the facts, decisions, names, numbers, open questions and results of "
    "tool calls that a reader needs to continue it. Do not add anything new. "
    "Reply with the summary only."
)

# (messages) -> prompt tokens, with the model's template.
CountTokens = Callable[[Sequence[Message]], Awaitable[int]]
# (messages, max_tokens) -> generated text.
Generate = Callable[[Sequence[Message], int], Awaitable[str]]
# (text, max_tokens) -> text cut to at most max_tokens tokens.
TruncateText = Callable[[str, int], Awaitable[str]]


@attrs.frozen
class Split:
    system: tuple[Message, ...]
    older: tuple[Message, ...]
    kept: tuple[Message, ...]


def split_conversation(messages: Sequence[Message], keep_last: int = KEEP_LAST) -> Split:
    """System messages (all of them), the older turns to summarize, the last ``keep_last``.

    Messages travel whole, images included: a kept message keeps its images, a
    summarized one is mentioned as ``[image]`` in the transcript.
    """
    cut = max(len(messages) - keep_last, 0)
    head, kept = messages[:cut], messages[cut:]
    system = tuple(m for m in head if m.role in SYSTEM_ROLES)
    older = tuple(m for m in head if m.role not in SYSTEM_ROLES)
    return Split(system=system, older=older, kept=tuple(kept))


def _transcript_text(message: Message) -> str:
    pieces = [
        part.text if isinstance(part, TextPart) else "[image]"
        for part in message.content
        if not isinstance(part, TextPart) or part.text
    ]
    return " ".join(pieces)


def message_as_text(message: Message) -> str:
    """One message as a transcript line: tool calls and results as text, images mentioned."""
    role = message.role
    text = _transcript_text(message)
    if role == "tool":
        return f"Tool result ({message.tool_call_id or ''}): {text}"
    if role == "assistant":
        lines = [f"Assistant: {text}"] if text else []
        for call in message.tool_calls:
            lines.append(f"Assistant called {call.name}({call.arguments})")
        return "\n".join(lines) or "Assistant:"
    if role in SYSTEM_ROLES:
        return f"System: {text}"
    return f"User: {text}"


def with_summary(
    system: Sequence[Message], summary: str, kept: Sequence[Message]
) -> tuple[Message, ...]:
    """The compressed conversation: system messages, the summary right after them, then ``kept``.

    The summary joins the last system message (templates such as Qwen's render
    only a leading system message), or becomes the system message if there is none.
    That message keeps its images.
    """
    note = f"{SUMMARY_HEADER}\n{summary.strip()}"
    if not system:
        return (text_message("system", note), *kept)
    *earlier, last = system
    text = f"{last.text}\n\n{note}" if last.text else note
    images = tuple(p for p in last.content if isinstance(p, ImagePart))
    merged = attrs.evolve(last, content=(*images, TextPart(text)))
    return (*earlier, merged, *kept)


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

    def _prompt(self, transcript: str) -> tuple[Message, ...]:
        return (
            text_message("system", SUMMARY_INSTRUCTIONS),
            text_message("user", f"Conversation:\n\n{transcript}"),
        )

    async def _fits(self, transcript: str) -> bool:
        tokens = await self._count(self._prompt(transcript))
        return tokens + self._summary_tokens <= self._window

    async def summarize(self, older: Sequence[Message]) -> str:
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


def describe(messages: Sequence[Message]) -> str:
    """Short description for logs."""
    return json.dumps([m.role for m in messages])
