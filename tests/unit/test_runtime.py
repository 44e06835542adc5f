"""Model-free runtime pieces: stop strings, the worker thread, default hooks."""

from __future__ import annotations

import asyncio
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlxhost.core.domain import Message, TextPart
from mlxhost.core.errors import InvalidRequest
from mlxhost.core.types import ContentDelta, LoadedModel, ModelInfo, ModelSpec
from mlxhost.families.builtin.generic_family import mlxhost_render_prompt, mlxhost_tool_call_parser
from mlxhost.families.toolcalls import ContentOnlyParser
from mlxhost.runtime.worker import MLXWorker
from mlxhost.service.stop import StopStringMatcher


def run_matcher(pieces, stops):
    matcher = StopStringMatcher(stops)
    out = "".join(matcher.feed(p) for p in pieces)
    return out + matcher.flush(), matcher.stopped


def test_stop_string_split_across_pieces():
    assert run_matcher(["Hello wo", "rl", "d! more"], ["world"]) == ("Hello ", True)


def test_partial_stop_prefix_is_released_when_it_diverges():
    assert run_matcher(["abc<e", "nd", "x"], ["<end>"]) == ("abc<endx", False)


@given(st.text(max_size=40), st.lists(st.integers(0, 40), max_size=6))
def test_any_split_gives_the_same_text(text, cuts):
    stops = ["STOP", "\n\n"]
    points = sorted({c for c in cuts if c <= len(text)})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)])]
    whole, _ = run_matcher([text], stops)
    assert run_matcher(pieces, stops)[0] == whole
    first = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    assert whole == text[:first]


async def test_worker_runs_jobs_on_one_thread_and_reraises():
    worker = MLXWorker()
    worker.start()
    try:
        names = await asyncio.gather(*(worker.run(lambda: threading.current_thread().name) for _ in range(3)))
        assert set(names) == {"mlx-worker"}
        with pytest.raises(ZeroDivisionError):
            await worker.run(lambda: 1 / 0)
        assert await worker.run(lambda: "still alive") == "still alive"
    finally:
        worker.stop()


def test_worker_runs_every_queued_job_before_the_next_tick():
    """Requests that arrive during a batch step all join before the next step
    (so the batch prefills them together instead of one step each)."""
    worker = MLXWorker()
    worker.start()
    order: list[str] = []
    in_tick = threading.Event()
    release = threading.Event()
    finished = threading.Event()
    ticks = 0

    def tick() -> bool:
        nonlocal ticks
        ticks += 1
        order.append(f"tick{ticks}")
        if ticks == 1:
            in_tick.set()
            release.wait(10)
        if ticks == 2:
            finished.set()
        return ticks < 2

    try:
        worker._jobs.put(lambda: worker.add_ticker(tick))
        assert in_tick.wait(10)
        for name in ("join-a", "join-b", "join-c"):  # queued while the first tick runs
            worker._jobs.put(lambda name=name: order.append(name))
        release.set()
        assert finished.wait(10)
        assert order == ["tick1", "join-a", "join-b", "join-c", "tick2"]
    finally:
        worker.stop()


def test_worker_frees_its_mlx_streams_on_its_own_thread_before_it_ends(monkeypatch):
    """MLX's thread-local streams must go before the thread's C++ teardown (exit abort otherwise)."""
    import sys
    import types

    calls = []
    fake_mx = types.SimpleNamespace(clear_streams=lambda: calls.append(threading.current_thread().name))
    monkeypatch.setitem(sys.modules, "mlx.core", fake_mx)
    worker = MLXWorker()
    worker.start()
    worker.stop()
    assert not worker.alive
    assert calls == ["mlx-worker"]


async def test_worker_stream_stops_between_items_when_consumer_leaves():
    worker = MLXWorker()
    worker.start()
    produced = []
    permits = threading.Semaphore(0)  # one per item the consumer has taken
    running = threading.Event()  # set while the worker thread is inside the producer

    def numbers(should_stop):
        # Lock-step with the consumer: item i+1 is made only once item i was taken,
        # so how far the producer got never depends on thread timing.
        running.set()
        try:
            for i in range(1000):
                produced.append(i)
                running.clear()
                yield i
                running.set()
                while not permits.acquire(timeout=0.005):
                    if should_stop():
                        return
        finally:
            running.clear()

    try:
        stream = worker.stream(numbers)
        async for item in stream:
            if item == 3:
                break
            permits.release()
        await stream.aclose()  # as the runtime does when its consumer leaves
        # The finally of stream() waited for the producer: the worker thread is out
        # of it (stopped at a yield or returned), so nothing runs on after.
        assert not running.is_set()
        assert produced == [0, 1, 2, 3]
        assert await worker.run(lambda: "next job") == "next job"
    finally:
        worker.stop()


class TemplateTokenizer:
    chat_template = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}<gen>"

    def apply_chat_template(
        self, messages, tools=None, chat_template=None, add_generation_prompt=True, tokenize=False
    ):
        assert chat_template == self.chat_template
        return "".join(f"[{m['role']}]{m['content']}" for m in messages) + "<gen>"


def loaded(tokenizer):
    info = ModelInfo(spec=ModelSpec(id="m"), config={}, path=None, context_window=4096)
    return LoadedModel(info=info, tokenizer=tokenizer, tool_parser=lambda tools: ContentOnlyParser(), loaded_at=0.0)


def test_fallback_renders_with_the_models_template():
    messages = (Message("user", (TextPart("a"), TextPart("b"))),)
    rendered = mlxhost_render_prompt(
        model=loaded(TemplateTokenizer()), messages=messages, tools=(), tool_choice="auto",
        template_variables={},
    )
    assert rendered.text == "[user]ab<gen>"


def test_fallback_without_template_is_a_clear_error():
    with pytest.raises(InvalidRequest, match="no chat template"):
        mlxhost_render_prompt(model=loaded(None), messages=(), tools=(), tool_choice="auto",
                              template_variables={})


def test_fallback_parser_passes_text_through():
    parser = mlxhost_tool_call_parser(model=loaded(None).info)(())
    assert parser.feed("<tool_call>x") == [ContentDelta("<tool_call>x")]
    assert parser.finish() == []


def test_openblas_preload_decision(tmp_path):
    from mlxhost.cli import blas

    library = tmp_path / "libblas.so.3"
    library.write_text("")
    env = {"MLXHOST_OPENBLAS_PATH": str(library)}
    assert blas.preload_env(env)["LD_PRELOAD"] == str(library)
    assert blas.wanted({**env, "MLXHOST_OPENBLAS": "0"}) is None
    assert blas.wanted({**env, "LD_PRELOAD": f"/x.so:{library}"}) is None


def test_loop_outbox_delivers_every_call_in_order_with_few_wakeups():
    """Two threads put calls while the loop drains: nothing lost, each thread's
    calls in order; a burst put while the loop is busy wakes it once."""
    from mlxhost.runtime.worker import LoopOutbox

    async def main() -> tuple[list[tuple[int, int]], int]:
        loop = asyncio.get_running_loop()
        outbox = LoopOutbox(loop)
        wakeups = 0
        real = loop.call_soon_threadsafe

        def counting(*args):
            nonlocal wakeups
            wakeups += 1
            return real(*args)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        got: list[tuple[int, int]] = []
        done = asyncio.Event()
        total = 2 * 2000

        def receive(item: tuple[int, int]) -> None:
            got.append(item)
            if len(got) == total:
                done.set()

        def producer(name: int) -> None:
            for k in range(2000):
                outbox.put(receive, (name, k))

        threads = [threading.Thread(target=producer, args=(n,)) for n in (0, 1)]
        for thread in threads:
            thread.start()
        await asyncio.wait_for(done.wait(), 30)
        for thread in threads:
            thread.join()
        # A burst from another thread while the loop is blocked (as during a
        # batch step's emits): one wake-up for all of it.
        before, burst = wakeups, []
        thread = threading.Thread(target=lambda: [outbox.put(burst.append, k) for k in range(100)])
        thread.start()
        thread.join()  # blocks the loop on purpose: nothing drains meanwhile
        while len(burst) < 100:
            await asyncio.sleep(0)
        return got, wakeups - before

    got, burst_wakeups = asyncio.run(main())
    for name in (0, 1):
        assert [k for n, k in got if n == name] == list(range(2000))
    assert burst_wakeups == 1
