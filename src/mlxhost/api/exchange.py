"""One request's lifecycle, shared by every API adapter.

An adapter is parse + fold + frames: it turns its wire body into domain
requests, folds a generation's events into its JSON body, and writes its
stream through a :class:`Frames` object. Everything else happens here, once:

1. Admission. ``service.start`` runs before any byte, so its errors (unknown
   model, bad field, prompt too long) are real HTTP errors, unless it takes
   longer than ``--stream-admission-wait`` (queued behind other requests, a model
   swap or load): then the headers go out and the wait is filled with the API's
   keep-alive frames; a later error travels as the API's error frames. The wait
   is longer than the keep-alive interval because clients act on HTTP errors
   that they do not act on as stream events (Claude Code retries a too-large
   max_tokens only on an HTTP 400; a stream without message_start sends it to
   non-streaming requests), and a client waiting for headers has no stream
   watchdog running yet.
2. Keep-alive. While a streamed request waits for admission or for its next
   event (the prefill of a long prompt), the API's keep-alive frame is written
   every ``--stream-keepalive`` seconds, so clients and proxies with idle
   watchdogs keep the stream.
3. Client disconnect. A JSON answer is cancelled when the client goes away; a
   stream is cancelled by the server, and its ``finally`` releases the
   generation (which stops it) whatever point it had reached.
4. Mid-stream errors become the API's error frames; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import attrs
from litestar import Request, Response, post
from litestar.response import Stream

from mlxhost.api.wire_schema import OPENAI_ERROR, operation
from mlxhost.core.domain import ChatRequest
from mlxhost.core.errors import ClientDisconnected, MlxhostError
from mlxhost.core.types import ContentDelta, GenerationEvent, ReasoningDelta, ToolCallEvent
from mlxhost.service.chat import ChatService, Generation

log = logging.getLogger(__name__)

T = TypeVar("T")

SSE = "text/event-stream"


def route(body: dict[str, Any], errors: dict[str, Any] = OPENAI_ERROR, *,
          path: str | None = None, media_type: str = SSE) -> Any:
    """The POST route of an endpoint that answers through the exchange, documenting
    its ``body`` schema and ``errors`` shape: status 200 (Litestar's POST default is
    201), and the stream's media type on the handler, because Litestar gives the
    handler's media type precedence over a Stream's own but not over a plain
    Response's (so the JSON answer still says JSON)."""
    return post(path, status_code=200, media_type=media_type,
                operation_class=operation(body, errors))


class Frames:
    """How one API writes a streamed answer. The exchange calls, in order:
    ``opening`` once, right after the headers; per generation ``started``,
    ``event`` for each of its events and ``ended``; ``finished`` once at the
    end. ``failed`` replaces the rest when an error comes after the headers;
    ``keepalive`` is written whenever the stream would stay silent for the
    keep-alive interval. Each returns the bytes to write."""

    media_type = SSE

    def opening(self, first: Generation | None) -> list[bytes]:
        """``first``: the first generation, when it was admitted before the headers."""
        return []

    def started(self, generation: Generation, index: int) -> list[bytes]:
        return []

    def event(self, event: GenerationEvent) -> list[bytes]:
        raise NotImplementedError

    def ended(self, generation: Generation, index: int) -> list[bytes]:
        return []

    def finished(self) -> list[bytes]:
        return []

    def failed(self, error: MlxhostError) -> list[bytes]:
        raise NotImplementedError

    def keepalive(self) -> bytes:
        raise NotImplementedError


class BlockFrames(Frames):
    """Frames of an API whose answer is a list of blocks, each opened, filled and
    closed: a thought, text, a tool call (Anthropic's content blocks, the Responses
    API's output items). A thought closes when text or a tool call comes; text
    closes when a thought (``_thinking`` closes it) or a tool call comes."""

    def event(self, event: GenerationEvent) -> list[bytes]:
        if isinstance(event, ReasoningDelta):
            return self._thinking(event.text) if event.text else []
        if isinstance(event, ContentDelta):
            frames = self._close_thought()
            return [*frames, *self._text(event.text)] if event.text else frames
        if isinstance(event, ToolCallEvent):
            return [*self._close_thought(), *self._close_text(), *self._tool_call(event)]
        return []

    def _thinking(self, text: str) -> list[bytes]:
        """Open a thought (closing the text) if none is, and add ``text`` to it."""
        raise NotImplementedError

    def _text(self, text: str) -> list[bytes]:
        """Open text if none is, and add ``text`` to it."""
        raise NotImplementedError

    def _tool_call(self, event: ToolCallEvent) -> list[bytes]:
        """The whole block of one tool call."""
        raise NotImplementedError

    def _close_thought(self) -> list[bytes]:
        raise NotImplementedError

    def _close_text(self) -> list[bytes]:
        raise NotImplementedError


# -- JSON answers ----------------------------------------------------------------
@attrs.frozen
class Folded:
    """Every generation of a JSON answer and what the adapter folded it into."""

    results: list[Any]
    generations: list[Generation]

    @property
    def headers(self) -> dict[str, str]:
        return self.generations[0].headers

    def response(self, content: Any) -> Response:
        """The JSON answer: ``content`` (the adapter's body) with the first generation's headers."""
        return Response(content=content, headers=self.headers, media_type="application/json")


async def fold(
    request: Request,
    service: ChatService,
    chats: Sequence[ChatRequest],
    fold_one: Callable[[Generation, int], Awaitable[Any]],
) -> Folded:
    """Run each request in turn (several choices or prompts run one after another)
    and fold its generation; the first one's errors are the answer's HTTP error."""
    results: list[Any] = []
    generations: list[Generation] = []
    for index, chat in enumerate(chats):
        generation = await service.start(chat)
        try:
            results.append(await until_disconnect(request, fold_one(generation, index)))
        finally:
            await generation.close()
        generations.append(generation)
    return Folded(results, generations)


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work``; if the client goes away first, cancel it (which stops generation)."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled() or not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientDisconnected()
    return task.result()


# -- streamed answers ---------------------------------------------------------------
async def stream(service: ChatService, chats: Sequence[ChatRequest], frames: Frames) -> Stream:
    """Admit the first request (its errors raise here, before any byte, unless
    admission outlasts ``--stream-admission-wait``) and return the streamed answer."""
    interval = keepalive_interval(service)
    admission = asyncio.ensure_future(service.start(chats[0]))
    try:
        await asyncio.wait({admission}, timeout=max(0.0, service.settings.stream_admission_wait))
    except BaseException:
        await _abandon(admission)
        raise
    headers: dict[str, str] = {}
    if admission.done():
        headers = admission.result().headers  # an admission error is an HTTP error
    body = _frames(service, chats, frames, admission, interval)
    # Started, so it is suspended inside its try: if the client leaves before the
    # server iterates it, asyncio's async-generator finalizer still runs its
    # finally, which releases the admission.
    await body.__anext__()
    return Stream(
        body,
        media_type=frames.media_type,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
    )


def keepalive_interval(service: ChatService) -> float | None:
    seconds = service.settings.stream_keepalive
    return seconds if seconds > 0 else None


async def _frames(
    service: ChatService,
    chats: Sequence[ChatRequest],
    frames: Frames,
    admission: asyncio.Future[Generation],
    interval: float | None,
) -> AsyncIterator[bytes]:
    generation: Generation | None = None
    try:
        yield b""
        first = admission.result() if admission.done() and not admission.exception() else None
        for frame in frames.opening(first):
            yield frame
        try:
            for index, chat in enumerate(chats):
                if index:
                    assert generation is not None
                    await generation.close()
                    generation = None
                    admission = asyncio.ensure_future(service.start(chat))
                async for _ in _while_waiting(admission, interval):
                    yield frames.keepalive()
                generation = admission.result()
                for frame in frames.started(generation, index):
                    yield frame
                async for event in _with_keepalive(generation.events(), interval):
                    if event is None:
                        yield frames.keepalive()
                        continue
                    for frame in frames.event(event):
                        yield frame
                for frame in frames.ended(generation, index):
                    yield frame
            for frame in frames.finished():
                yield frame
        except MlxhostError as exc:
            # The headers are gone: the failure travels as the API's error frames.
            log.warning("Stream failed after its headers: %s %s", exc.status_code, exc.message)
            for frame in frames.failed(exc):
                yield frame
    finally:
        if generation is not None:
            await generation.close()
        else:
            await _abandon(admission)


async def _abandon(admission: asyncio.Future[Generation]) -> None:
    """Stop an admission still under way, or release the generation it gave."""
    if not admission.done():
        admission.cancel()
        with contextlib.suppress(BaseException):
            await admission
        return
    if not admission.cancelled() and admission.exception() is None:
        await admission.result().close()


async def _while_waiting(future: asyncio.Future[Any], interval: float | None) -> AsyncIterator[None]:
    """Yield once per ``interval`` that passes before ``future`` is done."""
    while not future.done():
        await asyncio.wait({future}, timeout=interval)
        if not future.done():
            yield None


async def _with_keepalive(source: AsyncIterator[T], interval: float | None) -> AsyncIterator[T | None]:
    """``source``'s items, and None whenever ``interval`` passes without one."""
    if interval is None:
        async for item in source:
            yield item
        return
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(source.__anext__())
            async for _ in _while_waiting(pending, interval):
                yield None
            done, pending = pending, None
            try:
                item = done.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        # Ends the generation's event stream here (its finally releases the session).
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(BaseException):
                await aclose()
