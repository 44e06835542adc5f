"""Prompt-lookup speculative decoding: drafts from the text so far, no draft model.

An agent that edits a file sends the file and gets most of it back. When the
last few tokens generated also occur earlier in the prompt or the reply, the
tokens that followed them there are a good guess for what comes next:

1. :class:`PromptLookup` keeps an index of every n-gram (``MIN_NGRAM`` to
   ``MAX_NGRAM`` tokens) of the sequence so far and proposes the ``k`` tokens
   that followed the latest earlier occurrence of the longest suffix n-gram.
2. The model reads the pending token and the draft in one forward pass, which
   gives its distribution after each of them, and keeps a prefix of the draft:
   - greedy (``verify`` + ``accepted_prefix``): draft token i is
     accepted while it equals the greedy choice after token i - 1; the first
     mismatch is replaced by the model's own choice. So greedy output is
     exactly plain greedy decoding.
   - sampled (``accept_sampled``): rejection sampling with a draft that proposes
     each token with probability 1. Draft token i is accepted with probability
     p_i(d_i), p_i being the distribution the request's sampler draws from
     there (``engine.sampling.Sampler.transform``: the same code as the plain
     sampler); the first rejected one is replaced by a draw from p_i without
     d_i; a bonus token is drawn when all are accepted. Each emitted token has
     plain sampling's distribution; the keys come from the request's sampler,
     so a seeded request is reproducible.
   A pass yields 1 + accepted tokens; the cache is trimmed back past the
   rejected ones.
3. :class:`Policy` stops drafting where it loses: after a draft that gained
   nothing it waits a few steps (doubling, up to ``MAX_COOLDOWN``), so free
   chat with no repetition pays for a draft rarely.

Requests with logits processors (grammar, penalties, logit bias, a thinking
budget) decode plainly: those change the distribution per position and the
grammar would have to check drafted tokens. So do sequences in a batch
(``engine.batch``: only the lone sequence drafts). Each emitted ``TokenStep``
says what the pass drafted (``drafted`` on its first token, ``speculated`` on
accepted draft tokens); the service turns them into ``usage``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

MIN_NGRAM = 2
MAX_NGRAM = 4
DRAFT_TOKENS = 10
MAX_COOLDOWN = 16


class PromptLookup:
    """An index of the sequence's n-grams: where each last ended (the token after it)."""

    def __init__(self, tokens: Sequence[int] = ()) -> None:
        self.tokens: list[int] = []
        self._ends: dict[tuple[int, ...], int] = {}
        # The n-grams ending at the last token are indexed one token late, so a
        # lookup of the current suffix finds an *earlier* occurrence.
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            self._index_suffixes()
            self.tokens.append(int(token))

    def _index_suffixes(self) -> None:
        """Record the n-grams ending at the current last token (followed by the next one)."""
        end = len(self.tokens)
        for n in range(MIN_NGRAM, MAX_NGRAM + 1):
            if end >= n:
                self._ends[tuple(self.tokens[end - n : end])] = end

    def propose_after(self, token: int, k: int) -> list[int]:
        """:meth:`propose` as if ``token`` came next (it is not kept: it is added
        when it is emitted). The n-grams its addition indexes end before it, so
        they stay valid when it is added for good."""
        self.extend([token])
        try:
            return self.propose(k)
        finally:
            self.tokens.pop()

    def propose(self, k: int) -> list[int]:
        """Up to ``k`` tokens that followed the longest suffix n-gram's last earlier
        occurrence (empty: none found)."""
        if k <= 0:
            return []
        tokens = self.tokens
        for n in range(MAX_NGRAM, MIN_NGRAM - 1, -1):
            if len(tokens) < n:
                continue
            start = self._ends.get(tuple(tokens[-n:]))
            if start is not None and start < len(tokens):
                return tokens[start : start + k]
        return []


@attrs.define
class Policy:
    """Per sequence: whether to draft this step, and what it earned."""

    enabled: bool = True
    cooldown: int = 0  # steps to wait before the next draft
    penalty: int = 1  # the next cooldown after a draft that gained nothing
    drafted: int = 0
    accepted: int = 0
    drafts: int = 0

    def should_draft(self) -> bool:
        if not self.enabled:
            return False
        if self.cooldown > 0:
            self.cooldown -= 1
            return False
        return True

    def record(self, drafted: int, accepted: int) -> None:
        self.drafts += 1
        self.drafted += drafted
        self.accepted += accepted
        if accepted == 0:
            self.cooldown = self.penalty
            self.penalty = min(self.penalty * 2, MAX_COOLDOWN)
        else:
            self.penalty = 1

    @property
    def rate(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None


def accepted_prefix(draft: Sequence[int], targets: Sequence[int]) -> int:
    """How many draft tokens match the model's greedy choices (``targets[i]`` is its
    choice after draft token i - 1, the pending token for i = 0)."""
    count = 0
    for proposed, chosen in zip(draft, targets):
        if proposed != chosen:
            break
        count += 1
    return count


def verify(model: Any, cache: list[Any], pending: int, draft: list[int]) -> tuple[list[int], Any]:
    """Feed ``pending`` + ``draft`` in one pass; returns the greedy choice after each
    fed token (len(draft) + 1 of them) and their normalized log probabilities
    (one row each; a sampled request reads those). The cache then holds all of
    them: the caller trims it."""
    import mlx.core as mx
    from mlx_lm.generate import generation_stream

    with mx.stream(generation_stream):
        logits = model(mx.array([pending, *draft])[None], cache=cache)[0]
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        choices = mx.argmax(logprobs, axis=-1)
    mx.eval(choices, logprobs)
    chosen: list[int] = choices.tolist()  # type: ignore[assignment]
    return chosen, logprobs


def accept_sampled(rows: Any, draft: list[int], sampler: Any) -> tuple[int, Any]:
    """Rejection sampling against a draft that proposes each token with probability 1.

    ``rows[i]`` holds the model's log probabilities after draft token i - 1 (the
    pending token for i = 0); the target distribution there is
    ``p_i = softmax(sampler.transform(rows[i]))``, exactly what the plain sampler
    draws from. Draft token i is accepted with probability ``p_i(draft[i])``; at
    the first rejection the token is drawn from ``p_i`` without ``draft[i]``
    (renormalised), and when every draft token is accepted a bonus token is drawn
    from ``p_k``. Each emitted token is then distributed as plain sampling would
    make it. Random keys come from ``sampler.key()`` (two a pass), so a seeded
    request is reproducible.

    Returns the number accepted and the next token (a lazy ``(1,)`` array)."""
    import mlx.core as mx
    from mlx_lm.generate import generation_stream

    with mx.stream(generation_stream):
        logits = sampler.transform(rows)  # in the rows' dtype, as the plain sampler sees them
        probs = mx.softmax(logits[: len(draft)].astype(mx.float32), axis=-1)
        proposed = mx.take_along_axis(probs, mx.array(draft)[:, None], axis=-1)[:, 0]
        accepted = mx.random.uniform(shape=(len(draft),), key=sampler.key()) < proposed
    kept = 0
    for ok in accepted.tolist():  # type: ignore[union-attr]
        if not ok:
            break
        kept += 1
    with mx.stream(generation_stream):
        row = logits[kept]
        if kept < len(draft):  # the residual: p_i with the rejected token taken out
            row = mx.where(mx.arange(row.shape[-1]) == draft[kept], -mx.inf, row)
        token = mx.random.categorical(row[None], key=sampler.key())
    return kept, token


def can_rewind(cache: list[Any]) -> bool:
    """Whether every layer can be cut back (a sliding window past its size cannot)."""
    return all(hasattr(c, "is_trimmable") and c.is_trimmable() for c in cache)


def rewind(cache: list[Any], tokens: int) -> None:
    if tokens > 0:
        for layer in cache:
            layer.trim(tokens)
