"""runtime.speculative: prompt lookup drafts, and the lone batch sequence decoding
with them (tiny fp32 model, CPU): the tokens are exactly plain greedy decoding's."""

from __future__ import annotations

import pytest

from mlxhost.engine.speculative import MAX_COOLDOWN, Policy, PromptLookup, accepted_prefix


def test_lookup_proposes_what_followed_the_longest_earlier_match():
    lookup = PromptLookup([1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 1, 2, 3])
    # Suffix (1, 2, 3) occurred at the start, followed by 4, 5, ...
    assert lookup.propose(3) == [4, 5, 9]
    # (2, 3) alone occurred later (followed by 7), but the longer match wins.
    assert PromptLookup([2, 3, 7, 8, 6, 2, 3]).propose(2) == [7, 8]
    assert PromptLookup([1, 2, 3]).propose(4) == []  # no earlier occurrence
    assert lookup.propose(0) == []


def test_propose_after_does_not_keep_the_token():
    lookup = PromptLookup([5, 6, 7, 8, 5])
    assert lookup.propose_after(6, 2) == [7, 8]
    assert lookup.tokens == [5, 6, 7, 8, 5]
    lookup.extend([6])
    assert lookup.propose(2) == [7, 8]


def test_accepted_prefix_and_the_cooldown():
    assert accepted_prefix([4, 5, 6], [4, 5, 9, 1]) == 2
    assert accepted_prefix([4], [3, 4]) == 0
    policy = Policy()
    assert policy.should_draft()
    policy.record(5, 0)  # nothing gained: wait a step, then two, ...
    assert [policy.should_draft() for _ in range(2)] == [False, True]
    policy.record(5, 0)
    assert [policy.should_draft() for _ in range(3)] == [False, False, True]
    policy.record(5, 3)
    assert policy.penalty == 1 and policy.rate == 3 / 15
    for _ in range(10):
        policy.record(4, 0)
    assert policy.penalty == MAX_COOLDOWN


mx = pytest.importorskip("mlx.core")

# Prompts with repeated stretches (a file, then an instruction to return it).
PROMPTS = [
    tuple([(7 * k) % 200 + 3 for k in range(30)] * 2 + [1, 2, 3]),
    tuple([11, 12, 13, 14, 15, 16] * 5),
    tuple(range(40, 90)),
    tuple([(k * k) % 97 + 5 for k in range(25)] * 3),
    tuple([300, 301, 302, 303, 304, 300, 301]),
]


def run(model, prompt, *, speculative=True, eos=(), max_tokens=40, temperature=0.0, processors=()):
    from mlxhost.core.types import SamplingParams
    from mlxhost.engine.batch import TextBatch
    from mlxhost.engine.sampling import make_sampler
    from mlxhost.testing.tiny_text import TokenNames

    stored = []
    batch = TextBatch(
        model, eos=set(eos), max_batch=4, prefill_step=64, detokenizer=TokenNames,
        fetch_prefix=lambda tokens: (None, 0),
        store_prefix=lambda fed, cache: stored.append((fed, cache[0].offset)),
        token_logprob=lambda *a: None, speculative=speculative,
    )
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=3)
    steps = []
    batch.join(prompt, params, make_sampler(params), list(processors),
               lambda step, error: steps.append(step))
    while batch.step():
        pass
    return steps, batch, stored


@pytest.fixture(scope="module")
def model():
    from mlxhost.testing.tiny_text import tiny_qwen3

    return tiny_qwen3()


def test_greedy_output_is_exactly_plain_decoding(model):
    drafted = accepted = 0
    for prompt in PROMPTS:
        plain, _, _ = run(model, prompt, speculative=False)
        fast, batch, stored = run(model, prompt)
        assert [s.token for s in fast] == [s.token for s in plain]
        assert [s.finish for s in fast] == [s.finish for s in plain]
        drafted += batch.drafted
        accepted += batch.accepted
        (fed, held), = stored
        assert held == len(fed)  # the stored cache holds exactly the tokens it says
    assert drafted > 0 and accepted > 0


def test_an_end_inside_a_drafted_run_ends_where_plain_decoding_does(model):
    prompt = PROMPTS[1]
    plain, _, _ = run(model, prompt, speculative=False, max_tokens=60)
    tokens = [s.token for s in plain]
    for eos in {tokens[len(tokens) // 2], tokens[-5]}:
        first = tokens.index(eos)
        fast, _, stored = run(model, prompt, eos={eos}, max_tokens=60)
        assert [s.token for s in fast] == tokens[: first + 1]
        assert fast[-1].finish == "stop"
        (fed, held), = stored
        assert held == len(fed)
    for limit in (7, 23):  # max_tokens inside a drafted run
        fast, _, _ = run(model, prompt, max_tokens=limit)
        assert [s.token for s in fast] == tokens[:limit] and fast[-1].finish == "length"


def test_processed_and_opted_out_requests_do_not_draft(model):
    from mlxhost.core.types import SamplingParams
    from mlxhost.engine.sampling import make_logits_processors

    prompt = PROMPTS[1]
    penalties = make_logits_processors(SamplingParams(max_tokens=8, presence_penalty=0.5))
    _, processed, _ = run(model, prompt, processors=penalties)
    _, off, _ = run(model, prompt, speculative=False)
    assert processed.drafted == off.drafted == 0


def test_seeded_sampled_requests_draft_and_are_reproducible(model):
    drafted = 0
    for prompt in PROMPTS[:2]:
        once, batch, stored = run(model, prompt, temperature=0.3, max_tokens=60)
        again, _, _ = run(model, prompt, temperature=0.3, max_tokens=60)
        assert [s.token for s in once] == [s.token for s in again]
        # What each step reports adds up to what the batch counted.
        assert sum(s.drafted for s in once) == batch.drafted
        assert sum(s.speculated for s in once) == batch.accepted
        (fed, held), = stored
        assert held == len(fed)
        drafted += batch.drafted
        assert len(once) == 60
    assert drafted > 0


def test_greedy_steps_report_the_draft_and_the_accepted_tokens(model):
    steps, batch, _ = run(model, PROMPTS[0], max_tokens=60)
    assert batch.accepted > 0
    assert sum(s.drafted for s in steps) == batch.drafted
    assert sum(s.speculated for s in steps) == batch.accepted


# -- rejection sampling keeps the target distribution ---------------------------
VOCAB = 5


def _table():
    """Next-token logits by previous token (row VOCAB: the start): a fixed Markov chain."""
    import numpy as np

    return np.random.default_rng(7).normal(0.0, 1.2, size=(VOCAB + 1, VOCAB)).astype(np.float32)


def _logprobs(table, previous):
    import numpy as np

    row = table[previous].astype(np.float64)
    return (row - np.log(np.exp(row).sum())).astype(np.float32)


def _target(sampler, table, previous):
    """The exact distribution the sampler draws from after ``previous``."""
    import numpy as np

    logits = np.array(sampler.transform(mx.array(_logprobs(table, previous))[None])[0], dtype=np.float64)
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


def _distance(counts, exact):
    total = sum(counts.values())
    keys = set(counts) | set(exact)
    return 0.5 * sum(abs(counts.get(k, 0) / total - exact.get(k, 0.0)) for k in keys)


@pytest.mark.parametrize("settings", [
    {"temperature": 0.8, "top_k": 3},
    {"temperature": 1.3, "top_p": 0.9, "min_p": 0.08},
])
def test_rejection_sampling_keeps_the_distribution_of_plain_sampling(settings):
    """The first three tokens after a 2-token draft, over many seeded trials: their
    empirical joint distribution is within a small total-variation distance of
    the exact one of plain sampling (the sampler's filters applied); plain
    sampling's own empirical distribution, as a yardstick, is too."""
    import itertools

    import numpy as np

    from mlxhost.core.types import SamplingParams
    from mlxhost.engine.sampling import Sampler
    from mlxhost.engine.speculative import accept_sampled

    table = _table()
    start = VOCAB
    sampler = Sampler(SamplingParams(max_tokens=3, seed=11, **settings))
    first = _target(sampler, table, start)
    # Draft the second most likely first token, then the likeliest after it: each
    # draft token is accepted sometimes and rejected sometimes.
    d1 = int(first.argsort()[-2])
    d2 = int(_target(sampler, table, d1).argmax())
    draft = [d1, d2]
    exact = {}
    for seq in itertools.product(range(VOCAB), repeat=3):
        p, previous = 1.0, start
        for token in seq:
            p *= _target(sampler, table, previous)[token]
            previous = token
        if p > 0:
            exact[seq] = p

    def plain_from(tokens):
        while len(tokens) < 3:
            previous = tokens[-1] if tokens else start
            tokens.append(int(sampler(mx.array(_logprobs(table, previous))[None]).item()))
        return tuple(tokens)

    trials = 8000
    plain = {}
    for _ in range(trials):
        seq = plain_from([])
        plain[seq] = plain.get(seq, 0) + 1
    drafted = {}
    kept_counts = [0, 0, 0]
    rows = mx.array(np.stack([_logprobs(table, start), _logprobs(table, d1), _logprobs(table, d2)]))
    for _ in range(trials):
        kept, following = accept_sampled(rows, draft, sampler)
        kept_counts[kept] += 1
        seq = plain_from([*draft[:kept], int(following.item())])
        drafted[seq] = drafted.get(seq, 0) + 1
    assert all(count > trials // 20 for count in kept_counts)  # every path was taken
    plain_distance, drafted_distance = _distance(plain, exact), _distance(drafted, exact)
    print(f"total variation: plain {plain_distance:.4f}, speculative {drafted_distance:.4f}")
    assert plain_distance < 0.05
    assert drafted_distance < 0.05
    # The check has power: accepting every draft token (no rejection) is far off.
    greedy_draft = {}
    for _ in range(trials // 4):
        seq = plain_from(list(draft))
        greedy_draft[seq] = greedy_draft.get(seq, 0) + 1
    assert _distance(greedy_draft, exact) > 0.3
