"""The prefix cache's trie/LRU logic, with fake caches (no model, no MLX)."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlxhost.engine.prefix.cache import (
    PrefixCache,
    image_key_id,
    key_with_images,
)

BYTES_PER_TOKEN = 10


@attrs.define
class FakeCache:
    """Stands in for a KV cache: records the tokens it holds, so a test can check them."""

    tokens: tuple[int, ...]
    trimmable: bool = True
    nbytes: int | None = None  # default: BYTES_PER_TOKEN per token


class FakeAdapter:
    def __init__(self) -> None:
        self.copies = 0

    def length(self, cache: FakeCache) -> int:
        return len(cache.tokens)

    def nbytes(self, cache: FakeCache) -> int:
        return cache.nbytes if cache.nbytes is not None else BYTES_PER_TOKEN * len(cache.tokens)

    def can_trim(self, cache: FakeCache) -> bool:
        return cache.trimmable

    def trim(self, cache: FakeCache, num_tokens: int) -> None:
        assert cache.trimmable, "trimmed a cache that cannot be trimmed"
        assert 0 < num_tokens <= len(cache.tokens)
        cache.tokens = cache.tokens[:-num_tokens]

    def copy(self, cache: FakeCache) -> FakeCache:
        self.copies += 1
        return attrs.evolve(cache)


def make(max_bytes: int = 1 << 30) -> PrefixCache[FakeCache]:
    return PrefixCache(FakeAdapter(), max_bytes=max_bytes)


def put(pc: PrefixCache, tokens, *, trimmable: bool = True, model: str = "m", **kw) -> bool:
    tokens = tuple(tokens)
    return pc.insert(model, tokens, FakeCache(tokens, trimmable, **kw))


def r(a: int, b: int) -> tuple[int, ...]:
    return tuple(range(a, b))


# -- hits and misses -------------------------------------------------------------


def test_empty_cache_misses_and_returns_every_token():
    pc = make()
    fetched = pc.fetch_nearest("m", [1, 2, 3])
    cache, remaining = fetched
    assert cache is None and remaining == (1, 2, 3) and fetched.reused == 0
    assert pc.stats().misses == 1 and pc.stats().hits == 0


def test_stored_prefix_serves_a_longer_prompt():
    pc = make()
    put(pc, r(0, 5))
    fetched = pc.fetch_nearest("m", r(0, 8))
    assert fetched.cache.tokens == r(0, 5)
    assert fetched.remaining == (5, 6, 7) and fetched.reused == 5


def test_an_exact_match_leaves_one_token_to_prefill():
    pc = make()
    put(pc, r(0, 5), trimmable=True)
    fetched = pc.fetch_nearest("m", r(0, 5))
    assert fetched.cache.tokens == r(0, 4) and fetched.remaining == (4,)


def test_an_exact_non_trimmable_match_cannot_be_used():
    pc = make()
    put(pc, r(0, 5), trimmable=False)
    assert pc.fetch_nearest("m", r(0, 5)).cache is None
    # ...but a shorter snapshot on the same path can.
    put(pc, r(0, 4), trimmable=False)
    fetched = pc.fetch_nearest("m", r(0, 5))
    assert fetched.cache.tokens == r(0, 4) and fetched.remaining == (4,)


def test_one_token_prompt_is_never_served():
    pc = make()
    put(pc, (7,))
    assert pc.fetch_nearest("m", (7,)).cache is None


def test_partial_hit_trims_a_copy_back_to_the_shared_prefix():
    pc = make()
    put(pc, (1, 2, 3, 4, 5))
    fetched = pc.fetch_nearest("m", (1, 2, 3, 9, 9))
    assert fetched.cache.tokens == (1, 2, 3) and fetched.remaining == (9, 9)
    # The stored cache is untouched: the whole sequence still hits.
    assert pc.fetch_nearest("m", (1, 2, 3, 4, 5, 6)).cache.tokens == (1, 2, 3, 4, 5)


def test_a_prompt_that_is_a_prefix_of_a_stored_sequence():
    pc = make()
    put(pc, r(0, 10))
    fetched = pc.fetch_nearest("m", r(0, 6))
    assert fetched.cache.tokens == r(0, 5) and fetched.remaining == (5,)


def test_a_sibling_that_differs_only_at_the_last_token_is_trimmed():
    pc = make()
    put(pc, (5, 6, 7), trimmable=False)  # exact match: unusable
    put(pc, (5, 6, 9))  # shares all but the last prompt token
    fetched = pc.fetch_nearest("m", (5, 6, 7))
    assert fetched.cache.tokens == (5, 6) and fetched.remaining == (7,)


def test_a_trimmable_branch_above_a_longer_unusable_path():
    pc = make()
    put(pc, (0, 0, 0), trimmable=False)  # the deepest match, but unusable for (0, 0, 0)
    put(pc, (0, 1))  # branches off after one shared token
    fetched = pc.fetch_nearest("m", (0, 0, 0))
    assert fetched.cache.tokens == (0,) and fetched.remaining == (0, 0)


def test_the_returned_cache_is_a_copy():
    pc = make()
    put(pc, r(0, 5))
    first = pc.fetch_nearest("m", r(0, 9)).cache
    first.tokens = (42,)  # the engine extends its copy in place
    assert pc.fetch_nearest("m", r(0, 9)).cache.tokens == r(0, 5)


def test_deepest_usable_entry_wins():
    pc = make()
    put(pc, r(0, 3), trimmable=False)
    put(pc, r(0, 6), trimmable=False)
    put(pc, r(0, 9), trimmable=False)
    assert pc.fetch_nearest("m", r(0, 8)).cache.tokens == r(0, 6)
    assert pc.fetch_nearest("m", r(0, 20)).cache.tokens == r(0, 9)


# -- non-trimmable caches (sliding windows past their size) ----------------------


def test_non_trimmable_cache_is_reused_only_at_its_exact_end():
    pc = make()
    conversation = r(0, 20)
    put(pc, conversation[:12], trimmable=False)  # the snapshot at the end of the prompt
    put(pc, conversation[:16], trimmable=False)  # the cache after the reply
    # The next prompt re-tokenized the reply differently after token 14: the
    # after-reply cache covers tokens the prompt does not have and cannot be cut.
    edited = (*conversation[:14], 99, 98, 97)
    fetched = pc.fetch_nearest("m", edited)
    assert fetched.cache.tokens == conversation[:12]
    assert fetched.remaining == edited[12:]


def test_non_trimmable_entries_keep_their_prefixes():
    pc = make()
    put(pc, r(0, 4), trimmable=False)
    put(pc, r(0, 8), trimmable=False)
    assert sorted(map(len, pc.keys("m"))) == [4, 8]


def test_trimmable_entry_supersedes_the_prefixes_it_covers():
    pc = make()
    put(pc, r(0, 4))
    put(pc, r(0, 6), trimmable=False)
    put(pc, (0, 1, 50))  # a sibling branch: not a prefix, stays
    put(pc, r(0, 8))
    assert sorted(pc.keys("m")) == sorted([(0, 1, 50), r(0, 8)])
    assert pc.stats().superseded == 2
    assert pc.stats().bytes == BYTES_PER_TOKEN * (3 + 8)
    # Everything the dropped ones served is still served, by trimming.
    assert pc.fetch_nearest("m", (*r(0, 6), 77)).cache.tokens == r(0, 6)


# -- stale prefixes --------------------------------------------------------------


@pytest.mark.parametrize("trimmable", [True, False])
def test_a_changed_early_token_never_returns_stale_kv(trimmable):
    # A summarized (or edited) conversation: same length, one early token differs.
    pc = make()
    old = r(0, 50)
    put(pc, old, trimmable=trimmable)
    new = (0, 1, 2, 999, *old[4:], 50, 51)
    fetched = pc.fetch_nearest("m", new)
    if trimmable:
        assert fetched.cache.tokens == (0, 1, 2) and fetched.remaining == new[3:]
    else:
        assert fetched.cache is None and fetched.remaining == new
    changed_first = (999, *old[1:], 50)
    assert pc.fetch_nearest("m", changed_first).cache is None


def test_no_reuse_across_models_or_extra_keys():
    pc = make()
    put(pc, r(0, 5), model="a")
    assert pc.fetch_nearest("b", r(0, 9)).cache is None
    assert pc.fetch_nearest("a", r(0, 9), extra_key=b"image").cache is None
    pc.insert("a", r(0, 7), FakeCache(r(0, 7)), extra_key=b"image")
    assert pc.fetch_nearest("a", r(0, 9), extra_key=b"image").cache.tokens == r(0, 7)
    assert pc.fetch_nearest("a", r(0, 9)).cache.tokens == r(0, 5)


# -- byte budget and LRU ---------------------------------------------------------


def test_least_recently_used_entry_is_evicted_first():
    pc = make(max_bytes=100)
    put(pc, (1, 1, 1, 1), nbytes=40)
    put(pc, (2, 2, 2, 2), nbytes=40)
    pc.fetch_nearest("m", (1, 1, 1, 1, 5))  # touch the first: the second is now oldest
    put(pc, (3, 3, 3, 3), nbytes=40)
    assert sorted(pc.keys("m")) == [(1, 1, 1, 1), (3, 3, 3, 3)]
    stats = pc.stats()
    assert stats.bytes == 80 and stats.evictions == 1 and stats.entries == 2


def test_eviction_frees_enough_bytes_for_a_big_entry():
    pc = make(max_bytes=100)
    for i in range(5):
        put(pc, (i, i), nbytes=20)
    put(pc, (9, 9, 9), nbytes=90)
    assert pc.keys("m") == [(9, 9, 9)]
    assert pc.stats().bytes == 90


def test_an_entry_larger_than_the_budget_is_not_stored():
    pc = make(max_bytes=100)
    put(pc, (1, 2), nbytes=50)
    assert put(pc, (3, 4), nbytes=101) is False
    assert pc.keys("m") == [(1, 2)] and pc.stats().rejected == 1


def test_zero_budget_stores_nothing():
    pc = make(max_bytes=0)
    assert put(pc, r(0, 5)) is False
    assert pc.fetch_nearest("m", r(0, 9)).cache is None


def test_same_key_replaces_the_entry():
    pc = make()
    put(pc, r(0, 5), nbytes=10)
    put(pc, r(0, 5), nbytes=30)
    assert pc.stats().entries == 1 and pc.stats().bytes == 30


def test_insert_checks_the_cache_length():
    pc = make()
    with pytest.raises(ValueError, match="holds 3 tokens"):
        pc.insert("m", r(0, 5), FakeCache(r(0, 3)))


# -- clearing and stats ------------------------------------------------------------


def test_clear_model_drops_only_that_model():
    pc = make()
    put(pc, r(0, 5), model="a", nbytes=7)
    pc.insert("a", r(0, 6), FakeCache(r(0, 6), nbytes=7), extra_key=b"x")
    put(pc, r(0, 5), model="b", nbytes=5)
    pc.clear_model("a")
    assert pc.fetch_nearest("a", r(0, 9)).cache is None
    assert pc.fetch_nearest("a", r(0, 9), extra_key=b"x").cache is None
    assert pc.fetch_nearest("b", r(0, 9)).cache is not None
    assert pc.stats().bytes == 5 and len(pc) == 1
    pc.clear()
    assert len(pc) == 0 and pc.stats().bytes == 0


def test_stats_count_hits_misses_and_reused_tokens():
    pc = make()
    put(pc, r(0, 10))
    pc.fetch_nearest("m", r(0, 15))  # hit, 10 reused
    pc.fetch_nearest("m", (5, 6))  # miss
    pc.fetch_nearest("m", r(0, 4))  # hit, 3 reused (one left to prefill)
    stats = pc.stats()
    assert (stats.hits, stats.misses, stats.tokens_reused) == (2, 1, 13)
    assert stats.tokens_looked_up == 15 + 2 + 4
    assert stats.entries == 1 and stats.bytes == 100


def test_a_conversation_keeps_one_entry_per_trimmable_history():
    """The engine's pattern: snapshot at the end of the prompt, then prompt + reply."""
    pc = make()
    prompt = r(0, 10)
    for turn in range(4):
        fetched = pc.fetch_nearest("m", prompt)
        if turn:
            assert fetched.reused == len(prompt) - 3  # all but the new user message
        reply = tuple(range(100 * (turn + 1), 100 * (turn + 1) + 5))
        put(pc, prompt[:-1])
        put(pc, (*prompt, *reply))
        prompt = (*prompt, *reply, 7, 8, 9)
    assert len(pc) == 1


# -- property: every answer is correct and the best possible ---------------------

tokens_st = st.lists(st.integers(0, 2), min_size=1, max_size=6).map(tuple)
op_st = st.one_of(
    st.tuples(st.just("insert"), st.sampled_from("ab"), tokens_st, st.booleans()),
    st.tuples(st.just("fetch"), st.sampled_from("ab"), tokens_st),
    st.tuples(st.just("clear_model"), st.sampled_from("ab")),
)


def best_possible(live: list[tuple[tuple[int, ...], bool]], tokens: tuple[int, ...]) -> int:
    limit = len(tokens) - 1
    best = 0
    for key, trimmable in live:
        common = 0
        while common < min(len(key), len(tokens)) and key[common] == tokens[common]:
            common += 1
        if common == len(key) and len(key) <= limit:
            best = max(best, len(key))
        elif trimmable:
            best = max(best, min(common, limit))
    return best


@settings(max_examples=1000, deadline=None)
@given(st.lists(op_st, max_size=30), st.integers(0, 60))
def test_answers_match_a_brute_force_search(ops, budget):
    pc = make(max_bytes=budget)
    for op in ops:
        if op[0] == "insert":
            _, model, tokens, trimmable = op
            put(pc, tokens, trimmable=trimmable, model=model)
        elif op[0] == "fetch":
            _, model, tokens = op
            live = [(e.node_tokens, e.trimmable) for e in entries(pc, model)]
            fetched = pc.fetch_nearest(model, tokens)
            assert fetched.reused == best_possible(live, tokens)
            if fetched.cache is not None:
                assert fetched.cache.tokens == tokens[: fetched.reused]
            assert fetched.remaining == tokens[fetched.reused :]
        else:
            pc.clear_model(op[1])
        check_invariants(pc)


@attrs.frozen
class LiveEntry:
    node_tokens: tuple[int, ...]
    trimmable: bool
    cache: FakeCache


def entries(pc: PrefixCache, model: str) -> list[LiveEntry]:
    out = []
    for entry in pc._lru:
        if entry.root[0] == model:
            out.append(LiveEntry(pc._tokens_of(entry.node), entry.trimmable, entry.cache))
    return out


def check_invariants(pc: PrefixCache) -> None:
    all_entries = [*entries(pc, "a"), *entries(pc, "b")]
    assert pc.stats().bytes == sum(BYTES_PER_TOKEN * len(e.node_tokens) for e in all_entries)
    assert pc.stats().bytes <= pc.max_bytes
    for e in all_entries:
        assert e.cache.tokens == e.node_tokens  # the trie path is the cache's sequence
    for model in "ab":
        live = entries(pc, model)
        for e in live:
            if e.trimmable:  # a trimmable entry has no stored strict prefix
                assert not any(
                    len(o.node_tokens) < len(e.node_tokens)
                    and e.node_tokens[: len(o.node_tokens)] == o.node_tokens
                    for o in live
                )
        root = pc._roots.get((model, None))
        if root is None:
            assert not live
        else:
            check_nodes(root)


def check_nodes(node) -> None:
    """Depths add up, edges are keyed by their first token, no empty or pass-through nodes."""
    count = int(node.entry is not None and node.entry.trimmable)
    for first, child in node.children.items():
        assert child.parent is node and child.edge and child.edge[0] == first
        assert child.depth == node.depth + len(child.edge)
        assert child.entry is not None or len(child.children) >= 2
        check_nodes(child)
        count += child.trimmable_below
    assert node.trimmable_below == count


# -- image keys -------------------------------------------------------------------


def test_image_runs_get_ids_from_their_digest():
    IMG = 9
    tokens = (1, 2, IMG, IMG, IMG, 3, IMG, IMG, 4)
    key = key_with_images(tokens, IMG, [b"cat", b"dog"])
    cat, dog = image_key_id(b"cat"), image_key_id(b"dog")
    assert key == (1, 2, cat, cat, cat, 3, dog, dog, 4)
    assert cat < 0 and dog < 0 and cat != dog
    assert key_with_images(tokens, IMG, [b"cat", b"cow"]) != key
    assert key_with_images((1, 2, 3), IMG, []) == (1, 2, 3)


def test_image_run_count_must_match_the_images():
    with pytest.raises(ValueError):
        key_with_images((1, 9, 9, 2), 9, [])
    with pytest.raises(ValueError):
        key_with_images((1, 9, 9, 2), 9, [b"a", b"b"])


def test_same_text_with_another_image_misses_after_the_image():
    pc = make()
    IMG = 9
    prompt = (1, 2, IMG, IMG, 3, 4, 5)
    with_cat = key_with_images(prompt, IMG, [b"cat"])
    pc.insert("m", with_cat, FakeCache(with_cat, trimmable=True))
    fetched = pc.fetch_nearest("m", (*key_with_images(prompt, IMG, [b"dog"]), 6))
    assert fetched.reused == 2  # only the text before the image


def test_a_prefix_of_a_stored_trimmable_entry_is_not_stored_again():
    pc = make()
    put(pc, r(0, 8))
    assert put(pc, r(0, 5), trimmable=False) is False
    assert put(pc, r(0, 3)) is False
    assert pc.keys("m") == [r(0, 8)] and pc.stats().superseded == 2
    assert pc.fetch_nearest("m", (*r(0, 5), 9)).cache.tokens == r(0, 5)


# -- the benchmark's docs section ---------------------------------------------------


def test_benchmark_replaces_only_its_own_section(tmp_path):
    from bench.docs import markers, write_section
    from bench.prefix_cache import SECTION

    doc = tmp_path / "benchmarks.md"
    write_section(doc, SECTION, "first")
    assert doc.read_text().startswith("# Benchmarks\n")
    doc.write_text(doc.read_text() + "\n## Someone else's\nkeep me\n")
    write_section(doc, SECTION, "second")
    text = doc.read_text()
    assert "second" in text and "first" not in text and "keep me" in text
    assert text.count(markers(SECTION)[0]) == 1
