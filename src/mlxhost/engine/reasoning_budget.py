"""Following a thought in token ids: where it opens and closes, and its budget.

:class:`ThoughtTracker` is fed each generated token id. It knows whether the
reply is inside a thought, whether the answer has begun (a grammar applies from
there on) and, once the budget is spent, which token the engine must emit next
to close the thought (the model's own end marker; for harmony the end of the
analysis message and the header of the final one). The MLX engine wraps it in a
logits processor (``mlxhost.engine.reasoning_processor``); the fake engine follows it
directly. No MLX here.
"""

from __future__ import annotations

from mlxhost.core.types import ThinkingPlan


class ThoughtTracker:
    def __init__(self, plan: ThinkingPlan) -> None:
        self.plan = plan
        self.thinking = plan.inside
        # The answer has begun (a grammar applies from here on).
        self.answering = False
        # Thinking tokens so far (the markers included).
        self.spent = 0
        self._recent: list[int] = []
        self._forcing: list[int] = []
        self._first = True
        self._longest = max(
            (len(s) for s in (*plan.opens, plan.closes, plan.answer_opens, plan.force)), default=1
        )

    def forced(self) -> int | None:
        """The token the next step must emit (None: the model chooses)."""
        if self._forcing:
            return self._forcing[0]
        budget = self.plan.budget
        force = self.plan.force
        if self.thinking and budget is not None and self.spent >= budget and force:
            # A model already writing a multi-token closer gets only the rest of it.
            done = max((k for k in range(1, len(force)) if tuple(self._recent[-k:]) == force[:k]),
                       default=0)
            self._forcing = list(force[done:])
            return self._forcing[0]
        return None

    def may_open(self) -> bool:
        """At the first step of a reply that may think: a thought may still open
        (the engine then lets the open marker past a grammar)."""
        return self._first and not self.thinking and not self.answering and self.plan.may_skip

    def advance(self, token: int) -> None:
        if self._forcing and self._forcing[0] == token:
            self._forcing.pop(0)
        elif self._forcing:
            self._forcing = []  # the engine did not emit it: stop forcing
        first, self._first = self._first, False
        self._recent.append(token)
        del self._recent[: -self._longest]
        if self.thinking:
            self.spent += 1
            if self._ends(self.plan.closes):
                self.thinking = False
                if self.plan.answer_opens == self.plan.closes:
                    self.answering = True
            return
        if any(self._ends(s) for s in self.plan.opens):
            self.thinking = True
            self.spent += len(self._recent[-1:])
            return
        if self.answering:
            return
        if self._ends(self.plan.answer_opens):
            self.answering = True
        elif first and self.plan.may_skip and not self._starts_open(token):
            self.answering = True  # a reply that does not think: all answer

    def _ends(self, sequence: tuple[int, ...]) -> bool:
        return bool(sequence) and tuple(self._recent[-len(sequence) :]) == sequence

    def _starts_open(self, token: int) -> bool:
        return any(s and s[0] == token for s in self.plan.opens)
