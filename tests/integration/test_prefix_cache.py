"""The KV prefix cache with real models, in process: same replies, fewer tokens prefilled.

Each conversation runs twice on one loaded model, with the cache on and off,
at temperature 0; the replies must match token for token. Gemma's turns are
long enough to pass its 512-token sliding window, so the rotating caches
(which cannot be cut back) are reused too.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import attrs
import pytest

from mlxhost.core.types import RenderedPrompt, SamplingParams
from mlxhost.engine.mlx_engine import MLXEngine
from mlxhost.models.registry import folder_info
from mlxhost.models.starter.builder import ensure_test_model

MAX_TOKENS = 12
QUESTIONS = [
    "What did the keeper write down for each ship?",
    "Why would the colour of the sails matter?",
    "Suggest a title for the keeper's log.",
    "Summarize the story in one sentence.",
]
STORY = (
    "The lighthouse keeper kept a careful log of every ship that passed the rocky "
    "point, noting the weather, the colour of the sails and the hour. "
)


@attrs.frozen
class Turn:
    prompt_tokens: int
    reply_tokens: tuple[int, ...]
    reply: str
    reused: int  # prompt tokens served from the prefix cache


def load(name: str) -> tuple[MLXEngine, object]:
    path = ensure_test_model(name)
    engine = MLXEngine()
    tokenizer = engine.load(folder_info(path))
    return engine, tokenizer


@pytest.fixture(scope="module")
def smol():
    """SmolLM2 135M (llama, plain KV caches): the fast model of the plain-cache tests."""
    engine, tokenizer = load("smollm2")
    yield engine, tokenizer
    engine.unload()


@pytest.fixture(scope="module")
def gemma():
    engine, tokenizer = load("gemma")
    yield engine, tokenizer
    engine.unload()


def ask(engine: MLXEngine, tokenizer, messages: list[dict], max_tokens: int = MAX_TOKENS) -> Turn:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prepared = engine.prepare(RenderedPrompt(text))
    stats = engine.prefix_cache.stats() if engine.prefix_cache else None
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    steps = list(engine.generate(prepared, params, lambda: False))
    reused = engine.prefix_cache.stats().tokens_reused - stats.tokens_reused if stats else 0
    return Turn(
        prepared.num_tokens,
        tuple(s.token for s in steps),
        "".join(s.text for s in steps),
        reused,
    )


def conversation(
    engine, tokenizer, user_messages: list[str], max_tokens: int = MAX_TOKENS
) -> Iterator[Turn]:
    messages: list[dict] = []
    for content in user_messages:
        messages.append({"role": "user", "content": content})
        turn = ask(engine, tokenizer, messages, max_tokens)
        messages.append({"role": "assistant", "content": turn.reply})
        yield turn


def cache_off(engine: MLXEngine):
    """Context manager: run with the engine's prefix cache disabled."""

    class _Off:
        def __enter__(self):
            self.saved, engine.prefix_cache = engine.prefix_cache, None

        def __exit__(self, *exc):
            engine.prefix_cache = self.saved

    return _Off()


def on_and_off(
    engine, tokenizer, user_messages, max_tokens: int = MAX_TOKENS
) -> tuple[list[Turn], list[Turn]]:
    engine.prefix_cache.clear()
    on = list(conversation(engine, tokenizer, user_messages, max_tokens))
    with cache_off(engine):
        off = list(conversation(engine, tokenizer, user_messages, max_tokens))
    return on, off


def test_plain_cache_replies_match_with_the_cache_and_reuse_the_history(smol):
    engine, tokenizer = smol
    user_messages = [f"{STORY}\n{q}" if i == 0 else q for i, q in enumerate(QUESTIONS)]
    on, off = on_and_off(engine, tokenizer, user_messages)
    assert [t.reply_tokens for t in on] == [t.reply_tokens for t in off]
    assert on[0].reused == 0
    for previous, turn in itertools.pairwise(on):
        # At least the previous prompt came from the cache; usually the reply too,
        # unless re-tokenizing the reply text gives other tokens than were generated
        # (BPE: '"Weather' generated as '"', 'Weather' may come back as one token).
        assert previous.prompt_tokens <= turn.reused < turn.prompt_tokens
    assert any(
        turn.reused >= previous.prompt_tokens + len(previous.reply_tokens) - 1
        for previous, turn in itertools.pairwise(on)
    )
    # Plain KV caches cover their prefixes: a turn's entry replaces the previous
    # turn's, unless the re-tokenized reply made the conversation branch off it.
    assert len(engine.prefix_cache) < len(on)


def test_gemma_reuses_sliding_window_caches_past_the_window(gemma):
    engine, tokenizer = gemma
    user_messages = [f"Part {i + 1}. {STORY * 5}\n{q}" for i, q in enumerate(QUESTIONS)]
    # Short replies: the turns' long prompts pass the window; Gemma's decode
    # (its 262k-token output layer) is what costs time here.
    on, off = on_and_off(engine, tokenizer, user_messages, max_tokens=4)
    assert [t.reply_tokens for t in on] == [t.reply_tokens for t in off]
    window = 512
    assert on[-1].prompt_tokens > on[-2].prompt_tokens > window
    assert on[0].reused == 0 and all(t.reused > 0 for t in on[1:])
    # The last turn extends a cache that had already rotated past its window.
    assert on[-1].reused > window
    assert on[-1].reused >= on[-2].prompt_tokens


def test_gemma_edited_last_message_falls_back_to_an_exact_snapshot(gemma):
    """Regenerating or editing the last turn past the window: the longer rotated
    caches cannot be cut back, so only an entry the new prompt fully extends is used."""
    engine, tokenizer = gemma
    engine.prefix_cache.clear()
    history: list[dict] = []
    for i, q in enumerate(QUESTIONS[:3]):
        history.append({"role": "user", "content": f"Part {i + 1}. {STORY * 5}\n{q}"})
        turn = ask(engine, tokenizer, history, max_tokens=4)
        history.append({"role": "assistant", "content": turn.reply})
    assert turn.prompt_tokens > 512
    last = [*history[:-1]]  # the last exchange, answered again and then edited
    again = ask(engine, tokenizer, last, max_tokens=4)
    assert again.reply_tokens == turn.reply_tokens
    assert again.reused == again.prompt_tokens - 1  # the snapshot at the end of the prompt
    edited = [*history[:-2], {"role": "user", "content": "Part 3. Say hello instead."}]
    with_cache = ask(engine, tokenizer, edited, max_tokens=4)
    with cache_off(engine):
        without = ask(engine, tokenizer, edited, max_tokens=4)
    assert with_cache.reply_tokens == without.reply_tokens
    assert 0 < with_cache.reused < with_cache.prompt_tokens - 4


@pytest.mark.parametrize("name", ["gemma3", "qwen3_vl"])
def test_text_turns_on_vision_models_reuse_the_prefix(name):
    """mlx-vlm's path (tiny random VLMs: gibberish, but deterministic). Qwen3-VL's
    mRoPE positions come from the whole prompt, so they are primed before reuse."""
    from mlxhost.testing.vlm_models import ensure_tiny_vlm

    path = ensure_tiny_vlm(name)
    engine = MLXEngine()
    tokenizer = engine.load(folder_info(path))
    try:
        user_messages = [f"Part {i + 1}. {STORY * 12}\n{q}" for i, q in enumerate(QUESTIONS[:3])]
        on, off = on_and_off(engine, tokenizer, user_messages)
        assert [t.reply_tokens for t in on] == [t.reply_tokens for t in off]
        assert on[-1].prompt_tokens > 512  # past the tiny Gemma's sliding window
        # Their gibberish replies rarely re-tokenize as generated: past the window the
        # snapshot at the end of the previous prompt (all but its last token) serves.
        for previous, turn in itertools.pairwise(on):
            assert previous.prompt_tokens - 1 <= turn.reused < turn.prompt_tokens
    finally:
        engine.unload()


def test_unload_drops_the_models_entries(smol):  # the last SmolLM2 test: leaves it unloaded
    engine, tokenizer = smol
    ask(engine, tokenizer, [{"role": "user", "content": "Hi"}], max_tokens=1)
    assert len(engine.prefix_cache) > 0
    other = MLXEngine(prefix_cache_bytes=0)
    assert other.prefix_cache is None
    engine.prefix_cache.insert("other-model", (1, 2), _FakeOneLayer(2))
    model_id = engine.loaded.id
    engine.unload()
    assert engine.prefix_cache.keys(model_id) == []
    assert engine.prefix_cache.keys("other-model") == [(1, 2)]


class _FakeOneLayer(list):
    def __init__(self, offset: int):
        super().__init__([_Layer(offset)])


@attrs.define
class _Layer:
    offset: int
    nbytes: int = 8

    def is_trimmable(self) -> bool:
        return True


# -- the MLX adapter on real cache objects (no model) -----------------------------


def _filled(cache_list, n: int):
    import mlx.core as mx

    for layer in cache_list:
        for start in range(0, n, 100):
            size = min(100, n - start)
            keys = mx.random.normal((1, 1, size, 8))
            layer.update_and_fetch(keys, keys)
    mx.eval([c.state for c in cache_list])
    return cache_list


def test_mlx_adapter_on_plain_and_rotating_caches():
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache, RotatingKVCache

    from mlxhost.engine.prefix.cache import MLXCacheAdapter

    adapter = MLXCacheAdapter()
    plain = _filled([KVCache(), KVCache()], 300)
    assert adapter.length(plain) == 300 and adapter.can_trim(plain)
    assert adapter.nbytes(plain) >= 2 * 2 * 300 * 8 * 4

    copy = adapter.copy(plain)
    adapter.trim(copy, 100)
    _filled(copy, 1)  # writing into the copy...
    assert adapter.length(copy) == 201 and adapter.length(plain) == 300
    keys, _ = plain[0].keys_and_values()
    assert keys.shape[2] == 300  # ...leaves the original as it was
    before = mx.array(keys)
    copy[0].keys[..., :10, :] = 0
    assert mx.array_equal(plain[0].keys_and_values()[0], before).item()

    inside = _filled([RotatingKVCache(max_size=256), KVCache()], 200)
    assert adapter.can_trim(inside)
    past = _filled([RotatingKVCache(max_size=256), KVCache()], 300)
    assert adapter.length(past) == 300 and not adapter.can_trim(past)
