"""Running a benchmark: which model, which systems, in which order; the results.

A *system* is anything with the small interface of ``bench.systems`` (``name``,
``start(model) -> seconds``, ``generate(messages, max_tokens) -> Sample``,
``switch(model)``, ``server_load_seconds(model)``, ``stop()``). ``run_model``
measures several systems on one model (decode, TTFT, prefill, the first request
after the load); ``run_swap`` times swaps between two models on one system.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.log import say
from bench.measure import Sample, Spread, fmt_s, spread
from bench.prompts import long_messages, short_messages


@dataclass
class ModelCase:
    """A model and how much of it to measure."""

    key: str  # short name: qwen, gemma, gemma3-4b...
    label: str  # for tables
    path: Path
    max_tokens: int = 128
    runs: int = 3
    prefill_sentences: int = 0  # 0: no prefill measurement
    prefill_tokens: int = 0  # prompt tokens of the prefill prompt (raw engine's count)
    prefill_runs: int = 3
    short_tokens: int = 0  # prompt tokens of the short prompt (raw engine's count)
    weight_bytes: int = 0
    note: str = ""


@dataclass
class SystemResult:
    system: str
    model: str
    status: str = "ok"  # "ok" or "n/a: reason"
    startup_s: float | None = None
    warmup_s: float | None = None  # mlxhost's post-load warm-up, from its log
    first: Sample | None = None  # the first request after the load at start-up
    decode: list[Sample] = field(default_factory=list)
    prefill: list[Sample] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def decode_spread(self) -> Spread:
        return spread([s.decode_tps for s in self.decode])

    def ttft_spread(self) -> Spread:
        return spread([s.ttft for s in self.decode if s.ok])

    def prefill_spread(self) -> Spread:
        return spread([s.prefill_tps for s in self.prefill])

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SystemResult:
        """The inverse of ``to_dict``."""
        return cls(
            system=d["system"],
            model=d["model"],
            status=d["status"],
            startup_s=d["startup_s"],
            warmup_s=d.get("warmup_s"),
            first=Sample.from_dict(d["first"]),
            decode=[Sample.from_dict(s) for s in d["decode"]],
            prefill=[Sample.from_dict(s) for s in d["prefill"]],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "model": self.model,
            "status": self.status,
            "startup_s": self.startup_s,
            "warmup_s": self.warmup_s,
            "first": self.first.to_dict() if self.first else None,
            "decode": [s.to_dict() for s in self.decode],
            "prefill": [s.to_dict() for s in self.prefill],
        }


@dataclass
class SwapResult:
    system: str
    status: str = "ok"
    steps: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"system": self.system, "status": self.status, "steps": self.steps}


def _describe(sample: Sample) -> str:
    if not sample.ok:
        return f"ERROR {sample.error}"
    parts = [f"ttft {sample.ttft:.2f}s", f"{sample.completion_tokens} tok"]
    if sample.decode_tps:
        parts.append(f"decode {sample.decode_tps:.1f} tok/s")
    if sample.prompt_tokens:
        parts.append(f"prompt {sample.prompt_tokens} tok")
    return ", ".join(parts)


def _unavailable(exc: Exception) -> str:
    return f"n/a: {exc}"


def run_model(
    case: ModelCase,
    systems: Sequence[Any],
    *,
    interleave: bool = True,
    unavailable: tuple[type[Exception], ...] = (),
) -> list[SystemResult]:
    """Measure every system on one model.

    With ``interleave`` all systems are started first and run ``i`` goes to each
    system in turn before run ``i + 1``: background load (other work on the
    machine) then spreads over all systems instead of hitting one.
    """
    results = {s.name: SystemResult(system=s.name, model=case.key) for s in systems}

    def start(system: Any) -> bool:
        result = results[system.name]
        say(f"{case.key}: starting {system.name}")
        try:
            result.startup_s = system.start(case.path)
        except unavailable as exc:
            result.status = _unavailable(exc)
            say(f"{case.key}: {system.name} {result.status}")
            system.stop()
            return False
        if hasattr(system, "server_warmup_seconds"):
            result.warmup_s = system.server_warmup_seconds(case.path)
        say(f"{case.key}: {system.name} ready in {result.startup_s:.1f}s")
        return True

    def first(system: Any) -> bool:
        result = results[system.name]
        sample = system.generate(short_messages(0), min(8, case.max_tokens))
        result.first = sample
        say(f"{case.key}: {system.name} first request: {_describe(sample)}")
        if not sample.ok:
            result.status = f"n/a: {sample.error}"
            system.stop()
            return False
        return True

    def one(system: Any, kind: str, run: int) -> None:
        result = results[system.name]
        if kind == "decode":
            sample = system.generate(short_messages(run), case.max_tokens)
            result.decode.append(sample)
        else:
            if run > getattr(system, "prefill_runs_limit", run):
                return
            sample = system.generate(long_messages(run, case.prefill_sentences), 1)
            result.prefill.append(sample)
        say(f"{case.key}: {system.name} {kind} {run}: {_describe(sample)}")

    plan = [("decode", i) for i in range(1, case.runs + 1)]
    if case.prefill_sentences:
        plan += [("prefill", i) for i in range(1, case.prefill_runs + 1)]
    try:
        if interleave:
            live = [s for s in systems if start(s)]
            live = [s for s in live if first(s)]
            for kind, run in plan:
                for system in live:
                    one(system, kind, run)
        else:
            for system in systems:
                if start(system) and first(system):
                    for kind, run in plan:
                        one(system, kind, run)
                system.stop()
    finally:
        for system in systems:
            system.stop()
    return [results[s.name] for s in systems]


def run_swap(
    system: Any,
    a: ModelCase,
    b: ModelCase,
    *,
    max_tokens: int = 8,
    after: int = 2,
    unavailable: tuple[type[Exception], ...] = (),
) -> SwapResult:
    """Start on ``a``, then swap to ``b`` and back, timing the first requests after each swap.

    Each step records: the in-process/server-logged load time, the TTFT of the
    request that triggered the swap (HTTP servers load inside it; for the raw
    engine it is load + TTFT), and the TTFT of ``after`` later requests.
    """
    result = SwapResult(system=system.name)
    say(f"swap: starting {system.name} on {a.key}")
    try:
        startup = system.start(a.path)
        warm = system.generate(short_messages(80), max_tokens)
        if not warm.ok:
            raise RuntimeError(warm.error)
        result.steps.append({"to": a.key, "startup_s": startup, "warm": warm.to_dict()})
        for n, (src, dst) in enumerate(((a, b), (b, a)), start=1):
            load = system.switch(dst.path)
            # Two-digit tags: every prompt has the same length as the decode runs'.
            first = system.generate(short_messages(80 + 3 * n - 2), max_tokens)
            later = [
                system.generate(short_messages(80 + 3 * n - 1 + k), max_tokens)
                for k in range(after)
            ]
            if not first.ok:
                raise RuntimeError(first.error)
            logged = system.server_load_seconds(dst.path)
            warmup_of = getattr(system, "server_warmup_seconds", None)
            step = {
                "from": src.key,
                "to": dst.key,
                "load_s": logged,  # raw: in-process load; mlxhost: 'ready in' of its log
                "in_request": load is None,
                "warmup_s": warmup_of(dst.path) if warmup_of else None,
                "first": first.to_dict(),
                "later": [s.to_dict() for s in later],
                # time from asking for the other model to its first token
                "swap_to_first_token_s": (first.ttft or 0) + (load or 0),
                "later_ttft_median": spread([s.ttft for s in later if s.ok]).median,
            }
            if logged is not None:
                step["first_ttft_minus_load_s"] = step["swap_to_first_token_s"] - logged
            result.steps.append(step)
            say(
                f"swap {system.name} {src.key}->{dst.key}: first token after "
                f"{step['swap_to_first_token_s']:.2f}s (load {fmt_s(logged)}s),"
                f" later TTFT {step['later_ttft_median'] or float('nan'):.2f}s"
            )
    except (*unavailable, RuntimeError) as exc:
        result.status = _unavailable(exc)
        say(f"swap {system.name}: {result.status}")
    finally:
        system.stop()
    return result
