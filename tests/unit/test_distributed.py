"""The distributed command protocol, the follower loop and the side channel, with a
fake group of threads (no MLX collectives)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from mlxhost.core.types import SamplingParams
from mlxhost.distributed.follower import Follower
from mlxhost.distributed.group_link import FollowerLink, LeaderLink
from mlxhost.distributed.protocol import (
    Command,
    FakeGroup,
    Op,
    ProtocolError,
    Sender,
    decode,
    encode,
    receive,
    send,
)
from mlxhost.runtime.engine import PreparedPrompt
from mlxhost.testing.live import wait_until


def run_ranks(*targets):
    """Run one callable per rank on its own thread; return their results."""
    results: list = [None] * len(targets)
    errors: list = []

    def run(rank, target):
        try:
            results[rank] = target()
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(r, t)) for r, t in enumerate(targets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    if errors:
        raise errors[0]
    return results


def test_encode_decode_round_trip():
    params = SamplingParams(max_tokens=7, temperature=0.5, seed=3)
    command = Command(Op.JOIN, (PreparedPrompt(tokens=(1, 2, 3)), params), seq=9)
    header, payload = encode(command)
    assert header.dtype == np.int32 and header.shape == (4,) and header[2] == payload.size
    assert decode(header, payload) == command
    # A command without arguments is a header alone.
    header, payload = encode(Command(Op.STEP, seq=1))
    assert payload.size == 0 and decode(header, None) == Command(Op.STEP, (), 1)


def test_a_header_that_is_not_ours_is_refused():
    with pytest.raises(ProtocolError, match="not a command header"):
        decode(np.array([1, 5, 0, 1], dtype=np.int32), None)
    with pytest.raises(ProtocolError, match="unknown op"):
        header, _ = encode(Command(Op.STEP))
        header[1] = 99
        decode(header, None)


def test_every_follower_receives_what_rank_zero_sends():
    leader, *followers = FakeGroup.make(3)
    commands = [Command(Op.LOAD, ("model",), 1), Command(Op.STEP, (), 2), Command(Op.LEAVE, (4,), 3)]

    def lead():
        for command in commands:
            send(leader, command)

    def follow(group):
        return lambda: [receive(group) for _ in commands]

    _, *received = run_ranks(lead, *(follow(g) for g in followers))
    assert received == [commands, commands]


class RecordingEngine:
    """The engine calls a follower makes, in order."""

    def __init__(self):
        self.calls: list = []

    def load(self, info):
        self.calls.append(("load", info))

    def unload(self):
        self.calls.append(("unload",))

    def close(self):
        self.calls.append(("close",))

    def join(self, prompt, params, emit):
        self.calls.append(("join", prompt.tokens, params.max_tokens))
        emit(None, None)  # a follower's steps go nowhere
        return 1

    def leave(self, uid):
        self.calls.append(("leave", uid))

    def step(self):
        self.calls.append(("step",))
        return True

    def generate(self, prompt, params, should_stop):
        for index in range(3):
            self.calls.append(("item", index))
            yield index

    def shrink_prefix_cache(self, max_bytes):
        self.calls.append(("shrink", max_bytes))
        return 0

    def set_memory_limit(self, budget):
        self.calls.append(("limit", budget))


def test_a_follower_mirrors_rank_zeros_calls_in_order():
    leader, follower_group = FakeGroup.make(2)
    engine = RecordingEngine()
    woken = threading.Event()
    follower = Follower(follower_group, engine, wait_for_wake=woken.wait)
    prompt, params = PreparedPrompt(tokens=(5, 6)), SamplingParams(max_tokens=4)

    def lead():
        sender = Sender(leader)
        sender.send(Op.LOAD, "m")
        sender.send(Op.MEMORY_LIMIT, 100)
        sender.send(Op.JOIN, prompt, params)
        sender.send(Op.STEP)
        sender.send(Op.LEAVE, 1)
        sender.send(Op.GENERATE, prompt, params)
        sender.send(Op.NEXT)
        sender.send(Op.NEXT)
        sender.send(Op.CLOSE)  # rank 0 stopped after two items: so does the follower
        sender.send(Op.PARK)
        woken.set()  # the side channel's wake-up
        sender.send(Op.SHRINK, 0)
        sender.send(Op.UNLOAD)
        sender.send(Op.SHUTDOWN)

    run_ranks(lead, follower.run)
    assert engine.calls == [
        ("load", "m"), ("limit", 100), ("join", (5, 6), 4), ("step",), ("leave", 1),
        ("item", 0), ("item", 1), ("shrink", 0), ("unload",), ("close",),
    ]
    assert follower.handled == 12


def test_a_failing_call_is_logged_and_the_follower_goes_on():
    leader, follower_group = FakeGroup.make(2)
    engine = RecordingEngine()
    engine.load = lambda info: (_ for _ in ()).throw(ValueError("no such model"))  # type: ignore[method-assign]
    follower = Follower(follower_group, engine, wait_for_wake=lambda: None)

    def lead():
        sender = Sender(leader)
        sender.send(Op.LOAD, "missing")
        sender.send(Op.STEP)
        sender.send(Op.SHUTDOWN)

    run_ranks(lead, follower.run)
    assert engine.calls == [("step",), ("close",)]


def test_a_skipped_command_number_is_out_of_step():
    leader, follower_group = FakeGroup.make(2)
    follower = Follower(follower_group, RecordingEngine(), wait_for_wake=lambda: None)
    with pytest.raises(ProtocolError, match="out of step"):
        run_ranks(lambda: send(leader, Command(Op.STEP, seq=2)), follower.run)


def test_the_leader_link_reports_a_follower_that_closes_once():
    link = LeaderLink("127.0.0.1", 1)
    follower = FollowerLink("127.0.0.1", link.port, rank=1)
    link.accept(timeout=10)
    reasons: list[str] = []
    link.watch(reasons.append)
    follower.close()  # as a process that died: the connection closes
    wait_until(lambda: reasons, timeout=10, what="the loss reported")
    assert reasons == ["rank 1 closed its connection (the process ended)"] and link.lost


def test_the_leader_link_reports_a_silent_follower_as_hung():
    link = LeaderLink("127.0.0.1", 1, silence=0.5)
    follower = FollowerLink("127.0.0.1", link.port, rank=1)
    link.accept(timeout=10)
    follower._ending.set()  # the heartbeat thread stops; the connection stays open
    reasons: list[str] = []
    link.watch(reasons.append)
    wait_until(lambda: reasons, timeout=10, what="the silence reported")
    assert "sent no heartbeat" in reasons[0] and "hung" in reasons[0]
    link.close(wait=0)
    follower.close()


def test_a_parked_follower_wakes_on_the_side_channel():
    link = LeaderLink("127.0.0.1", 1)
    follower = FollowerLink("127.0.0.1", link.port, rank=1)
    link.accept(timeout=10)
    woke = threading.Event()
    waiting = threading.Thread(target=lambda: (follower.wait_for_wake(), woke.set()))
    waiting.start()
    assert not woke.wait(0.2)
    link.wake()
    waiting.join(10)
    assert woke.is_set()
    closing = threading.Thread(target=link.close)
    closing.start()
    follower.close()
    closing.join(10)
    assert not link.lost  # an orderly end is no loss


def test_a_launched_rank_that_exits_is_a_loss():
    class Exited:
        def poll(self):
            return -9

    link = LeaderLink("127.0.0.1", 0)
    link.accept(timeout=1)
    reasons: list[str] = []
    link.watch(reasons.append, processes=[(1, Exited())])
    wait_until(lambda: reasons, timeout=10, what="the exit reported")
    assert reasons == ["rank 1 exited with status -9"]


def test_each_rank_keeps_its_prefix_cache_slices_in_its_own_folder(tmp_path):
    # Ranks hold different slices of the KV: sharing files would serve one
    # rank another's slice after a restart.
    from mlxhost.families.builtin.mlx_engine import make_mlx_engine
    from mlxhost.settings.table import Settings

    class OneGroup:
        def __init__(self, rank):
            self._rank = rank

        def rank(self):
            return self._rank

        def size(self):
            return 2

    class FakeSharder:
        group = None

    settings = Settings(prefix_cache_dir=str(tmp_path))
    leader = make_mlx_engine(settings, FakeSharder())
    follower_sharder = FakeSharder()
    follower_sharder.group = OneGroup(1)
    follower = make_mlx_engine(settings, follower_sharder)
    alone = make_mlx_engine(settings)
    try:
        assert leader.prefix.disk.directory == tmp_path / "rank-0"
        assert follower.prefix.disk.directory == tmp_path / "rank-1"
        assert alone.prefix.disk.directory == tmp_path
    finally:
        for engine in (leader, follower, alone):
            engine.close()


class TrimmableCache:
    """A prefix cache's copy out: trimming removes tokens from the end."""

    def __init__(self, tokens: int, trimmable: bool = True):
        self.tokens, self.trimmable = tokens, trimmable


class FakeAdapter:
    def can_trim(self, cache):
        return cache.trimmable

    def trim(self, cache, n):
        cache.tokens -= n


@pytest.mark.parametrize(
    ("mine", "trimmable", "peer_rounds", "expected"),
    [
        (40, True, [40, 40], 40),  # both ranks found the same prefix
        (40, True, [25, 25], 25),  # the peer found less: cut back to its length
        (40, False, [25, 25], 0),  # cannot cut (a sliding window): none
        (25, True, [40, 0], 0),  # the peer could not cut to 25: drop it here too
        (0, True, [40, 0], 0),  # nothing here: the peer drops its hit
    ],
)
def test_ranks_agree_on_the_prefix_they_all_have(monkeypatch, mine, trimmable, peer_rounds, expected):
    """Each rank's caches are its own (a disk entry one rank lost), but every rank
    must prefill the same tokens: two rounds of all_min, then every rank agrees."""
    import mlx.core as mx

    from mlxhost.engine.mlx_engine import MLXEngine

    class Sharder:
        group = mx.distributed.init()  # a group of one; the peer is scripted below

    engine = MLXEngine(sharder=Sharder())
    engine.prefix_cache = type("PC", (), {"adapter": FakeAdapter()})()
    rounds = iter(peer_rounds)
    monkeypatch.setattr(
        mx.distributed, "all_min", lambda x, group=None, stream=None: mx.minimum(x, next(rounds))
    )
    cache = TrimmableCache(mine, trimmable) if mine else None
    cache, reused = engine.prefix.agree(cache, mine)
    assert reused == expected and next(rounds, "done") == "done"  # always two rounds
    assert (cache.tokens if cache is not None else 0) == expected


def test_a_group_runs_mlx_vlm_models_on_mlx_lm_s_generation_stream():
    """Commands go on mlx-lm's stream; a vision model's all-reduces on another
    stream raced them (a follower read a garbled command and left)."""
    import importlib

    from mlx_lm.generate import generation_stream

    from mlxhost.distributed.protocol import one_generation_stream

    one_generation_stream()
    assert importlib.import_module("mlx_vlm.generate.ar").generation_stream is generation_stream
