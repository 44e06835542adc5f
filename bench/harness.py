"""Measurement core shared by the CPU benchmark (``python -m bench``) and the GPU run.

What one measurement is (the same for every system):

- the prompt is a chat (``messages``); each system applies the model's chat
  template itself (servers) or we apply it exactly as mlxhost does (raw engine);
- greedy decoding (temperature 0), streaming;
- time to first token (TTFT): request sent -> first non-empty content chunk
  (raw engine: call started, chat template included -> first token yielded);
- decode tok/s: ``(n - 1) / (t_last - t_first)``, ``n`` the completion tokens
  from ``usage`` (else the count of content chunks), ``t_first``/``t_last`` the
  arrival times of the first and last content;
- prefill tok/s: prompt tokens / TTFT on a long (~1,500 token) prompt.

Every run's prompt starts with its own tag (``[run 03]``) so that no server
(mlxhost's prefix cache, mlx-lm's and mlx-vlm's prompt caches) reuses the KV of
an earlier run beyond the chat template's fixed header: these are cold prompts.
Run ``i`` gets the same prompt on every system.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import docs

Messages = list[dict[str, Any]]

# --- prompts ----------------------------------------------------------------

SHORT_TASK = (
    "Write a Python module that implements a linked list, a stack, a queue and a binary search "
    "tree. Give every class and method a docstring, then add unit tests for all of them."
)
# (Both test models answer it with well over 128 tokens under greedy decoding, whatever the tag.)
LONG_TASK = "Summarize the notes above in three sentences."

_SUBJECTS = [
    "The engineer",
    "A small river",
    "The old library",
    "Every winter",
    "The night train",
    "A careful gardener",
    "The city council",
    "Our neighbour",
    "The mountain road",
    "A quiet student",
    "The harbour master",
    "The weather station",
    "A travelling musician",
]
_VERBS = [
    "measured",
    "remembered",
    "carried",
    "described",
    "repaired",
    "painted",
    "counted",
    "followed",
    "collected",
    "explained",
    "ignored",
    "translated",
    "protected",
]
_OBJECTS = [
    "the broken clock",
    "forty wooden boxes",
    "a map of the coast",
    "the spring flowers",
    "three letters from abroad",
    "the price of bread",
    "an unusual bird",
    "the village well",
    "a list of old recipes",
    "the first snowfall",
    "the copper bridge",
    "a faded photograph",
]
_ENDINGS = [
    "before the market opened.",
    "while the rain kept falling.",
    "for the annual report.",
    "without telling anyone.",
    "during the long holiday.",
    "as the sun went down.",
    "with surprising patience.",
    "after a long discussion.",
    "near the northern gate.",
]


def tag(run: int | str) -> str:
    return f"[run {run:02d}]" if isinstance(run, int) else f"[{run}]"


def short_messages(run: int | str) -> Messages:
    """The decode prompt: short, asks for a long answer."""
    return [{"role": "user", "content": f"{tag(run)} {SHORT_TASK}"}]


def filler(sentences: int, seed: int = 7) -> str:
    """Deterministic plain-English notes (the same text for every run and system)."""
    rng = random.Random(seed)
    lines = []
    for i in range(sentences):
        lines.append(
            f"{i + 1}. {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
            f"{rng.choice(_ENDINGS)}"
        )
    return "\n".join(lines)


def long_messages(run: int | str, sentences: int) -> Messages:
    """The prefill prompt: ``sentences`` numbered notes, then a short task."""
    return [{"role": "user", "content": f"{tag(run)} Notes:\n{filler(sentences)}\n\n{LONG_TASK}"}]


def fit_long_prompt(count_tokens: Callable[[Messages], int], target: int) -> tuple[int, int]:
    """(sentences, prompt tokens) of the longest notes prompt at or under ``target`` tokens."""
    low, high = 1, max(8, target // 4)
    while count_tokens(long_messages(0, high)) <= target:
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        if count_tokens(long_messages(0, mid)) <= target:
            low = mid
        else:
            high = mid
    return low, count_tokens(long_messages(0, low))


def chat_token_counter(model_path: Path) -> Callable[[Messages], int]:
    """Prompt tokens of a chat as the raw engine and mlxhost see it (template, then encode)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))

    def count(messages: Messages) -> int:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return len(tokenizer.encode(text, add_special_tokens=False))

    return count


# --- samples and statistics -------------------------------------------------


@dataclass
class Sample:
    """One request. Times in seconds from the moment the request was sent."""

    ttft: float | None = None
    t_first: float | None = None
    t_last: float | None = None
    total: float | None = None
    completion_tokens: int = 0
    prompt_tokens: int | None = None
    chunks: int = 0
    text: str = ""
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.ttft is not None

    @property
    def decode_tps(self) -> float | None:
        n = self.completion_tokens
        if not self.ok or n < 2 or self.t_last is None or self.t_last <= self.t_first:
            return None
        return (n - 1) / (self.t_last - self.t_first)

    @property
    def prefill_tps(self) -> float | None:
        if not self.ok or not self.prompt_tokens:
            return None
        return self.prompt_tokens / self.ttft

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["text"] = self.text[:200]
        out["decode_tps"] = self.decode_tps
        out["prefill_tps"] = self.prefill_tps
        return out


@dataclass
class Spread:
    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def min(self) -> float | None:
        return min(self.values) if self.values else None

    @property
    def max(self) -> float | None:
        return max(self.values) if self.values else None

    def fmt(self, digits: int = 1) -> str:
        """``median (min–max)``, or ``n/a``."""
        if not self.values:
            return "n/a"
        if self.n == 1:
            return f"{self.values[0]:.{digits}f}"
        return f"{self.median:.{digits}f} ({self.min:.{digits}f}–{self.max:.{digits}f})"


def spread(values: Sequence[float | None]) -> Spread:
    return Spread([v for v in values if v is not None])


def ratio(a: float | None, b: float | None, digits: int = 2) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.{digits}f}"


# --- HTTP ---------------------------------------------------------------------


def stream_chat(
    base_url: str,
    model: str,
    messages: Messages,
    max_tokens: int,
    *,
    timeout: float = 1800.0,
) -> Sample:
    """One streaming chat completion, timed chunk by chunk."""
    import httpx

    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sample = Sample()
    usage: dict[str, Any] | None = None
    pieces: list[str] = []
    started = time.perf_counter()
    try:
        with httpx.stream(
            "POST", f"{base_url}/v1/chat/completions", json=body, timeout=timeout
        ) as response:
            if response.status_code != 200:
                response.read()
                sample.error = f"HTTP {response.status_code}: {response.text[:300]}"
                return sample
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("error"):
                    sample.error = f"stream error: {json.dumps(chunk['error'])[:300]}"
                    break
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    piece = delta.get("content") or delta.get("reasoning_content") or ""
                    if piece:
                        now = time.perf_counter() - started
                        if sample.t_first is None:
                            sample.t_first = sample.ttft = now
                        sample.t_last = now
                        sample.chunks += 1
                        pieces.append(piece)
    except Exception as exc:  # a peer that dies mid-request is a result, not a crash
        sample.error = f"{type(exc).__name__}: {exc}"[:300]
    sample.total = time.perf_counter() - started
    sample.text = "".join(pieces)
    if usage:
        sample.prompt_tokens = usage.get("prompt_tokens")
        sample.completion_tokens = usage.get("completion_tokens") or sample.chunks
    else:
        sample.completion_tokens = sample.chunks
    if sample.error is None and sample.ttft is None:
        sample.error = "no content was streamed"
    return sample


# --- the machine and versions ---------------------------------------------------


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "cores": os.cpu_count(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["ram_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    info.setdefault("cpu", platform.processor() or "unknown")
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        if out.returncode == 0 and out.stdout.strip():
            info["gpu"] = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def versions() -> dict[str, str]:
    out = {}
    for dist in (
        "mlx",
        "mlx-cpu",
        "mlx-cuda-13",
        "mlx-metal",
        "mlx-lm",
        "mlx-vlm",
        "mlxhost",
        "transformers",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        root = Path(__file__).resolve().parent.parent
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "src", "plugins"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        if commit:
            out["mlxhost commit"] = commit + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def model_weight_bytes(path: Path) -> int:
    """Bytes of weights in a model folder (the safetensors files' tensors)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        total = json.loads(index.read_text()).get("metadata", {}).get("total_size")
        if total:
            return int(total)
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


# --- markdown section -------------------------------------------------------------



def write_section(doc: Path, body: str) -> None:
    """Replace this benchmark's section of ``doc``, leaving the rest."""
    docs.write_section(doc, "main-bench", body)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append(
            "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |"
        )
    return "\n".join(lines)


# --- suites -------------------------------------------------------------------------


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


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


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
                f"{step['swap_to_first_token_s']:.2f}s (load {_s(logged)}s),"
                f" later TTFT {step['later_ttft_median'] or float('nan'):.2f}s"
            )
    except (*unavailable, RuntimeError) as exc:
        result.status = _unavailable(exc)
        say(f"swap {system.name}: {result.status}")
    finally:
        system.stop()
    return result


# --- reports ------------------------------------------------------------------------

ENGINE_OF = {
    "mlxhost": "mlx-lm, in `mlxhost serve`",
    "mlxhost-no-openblas": "mlx-lm, in `mlxhost serve --no-openblas`",
    "mlxhost-no-warmup": "mlx-lm, in `mlxhost serve`, `MLXHOST_WARMUP=0`",
    "raw-mlx-lm": "`mlx_lm.stream_generate`, in-process",
    "raw-mlx-vlm": "`mlx_vlm.stream_generate`, in-process",
    "mlx-lm-server": "`python -m mlx_lm server`",
    "mlx-vlm-server": "`python -m mlx_vlm.server`",
}


def _s(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _prompt_tokens(samples: Sequence[Sample]) -> str:
    seen = sorted({s.prompt_tokens for s in samples if s.ok and s.prompt_tokens})
    return "/".join(str(x) for x in seen) or "?"


def model_table(
    case: ModelCase, results: Sequence[SystemResult], reference: str = "mlxhost"
) -> str:
    """One row per system; ratios are mlxhost's figure divided by the row's."""
    ref = next((r for r in results if r.system == reference and r.ok), None)
    header = [
        "system",
        "runs on",
        "decode tok/s",
        "TTFT s (short prompt)",
        f"prefill tok/s (~{case.prefill_tokens}-token prompt)"
        if case.prefill_sentences
        else "prefill tok/s",
        "TTFT s, 1st request after load",
        "prompt tokens (short, long)",
        "mlxhost ÷ this: decode",
        "mlxhost ÷ this: prefill",
        "mlxhost ÷ this: TTFT",
    ]
    rows = []
    for r in results:
        engine = ENGINE_OF.get(r.system, r.system)
        if not r.ok:
            rows.append([f"**{r.system}**", engine, r.status, "", "", "", "", "", "", ""])
            continue
        dec, ttft, pre = r.decode_spread(), r.ttft_spread(), r.prefill_spread()
        if ref is not None and r.system != reference:
            ratios = [
                ratio(ref.decode_spread().median, dec.median),
                ratio(ref.prefill_spread().median, pre.median),
                ratio(ref.ttft_spread().median, ttft.median),
            ]
        else:
            ratios = ["—", "—", "—"]
        rows.append(
            [
                f"**{r.system}**",
                engine,
                dec.fmt(1),
                ttft.fmt(2),
                pre.fmt(1) if case.prefill_sentences else "not measured",
                _s(r.first.ttft if r.first else None),
                f"{_prompt_tokens(r.decode)}, {_prompt_tokens(r.prefill) if r.prefill else '—'}",
                *ratios,
            ]
        )
    return md_table(header, rows)


def headline_rows(case: ModelCase, results: Sequence[SystemResult]) -> list[list[str]]:
    """mlxhost ÷ each other system, decode and prefill medians."""
    ref = next((r for r in results if r.system == "mlxhost" and r.ok), None)
    rows = []
    for r in results:
        if r.system.startswith("mlxhost"):
            continue
        if ref is None or not r.ok:
            rows.append([case.label, r.system, "n/a", "n/a", "n/a"])
            continue
        rows.append(
            [
                case.label,
                r.system,
                ratio(ref.decode_spread().median, r.decode_spread().median),
                ratio(ref.prefill_spread().median, r.prefill_spread().median)
                if case.prefill_sentences
                else "not measured",
                ratio(ref.ttft_spread().median, r.ttft_spread().median),
            ]
        )
    return rows


def headline_table(pairs: Sequence[tuple[ModelCase, Sequence[SystemResult]]]) -> str:
    rows = [row for case, results in pairs for row in headline_rows(case, results)]
    return md_table(
        [
            "model",
            "vs",
            "decode tok/s ratio",
            "prefill tok/s ratio",
            "TTFT ratio (lower: mlxhost faster)",
        ],
        rows,
    )


def first_request_table(pairs: Sequence[tuple[ModelCase, Sequence[SystemResult]]]) -> str:
    rows = []
    for case, results in pairs:
        for r in results:
            if not r.ok or r.first is None:
                continue
            later = r.ttft_spread()
            rows.append(
                [
                    case.label,
                    r.system,
                    _s(r.warmup_s) if r.warmup_s is not None else "none",
                    _s(r.first.ttft),
                    later.fmt(2),
                    ratio(r.first.ttft, later.median),
                ]
            )
    return md_table(
        [
            "model",
            "system",
            "post-load warm-up s",
            "1st request TTFT s",
            "later TTFT s (median, min–max)",
            "1st ÷ later",
        ],
        rows,
    )


def swap_table(swaps: Sequence[SwapResult]) -> str:
    rows = []
    for swap in swaps:
        if swap.status != "ok":
            rows.append([swap.system, swap.status, "", "", "", "", "", "", ""])
            continue
        for step in swap.steps:
            if "from" not in step:
                continue
            rows.append(
                [
                    swap.system,
                    f"{step['from']} → {step['to']}",
                    _s(step["swap_to_first_token_s"]),
                    _s(step["load_s"]),
                    _s(step.get("warmup_s")),
                    _s(step.get("first_ttft_minus_load_s")),
                    _s(step["later_ttft_median"]),
                    _s(
                        step["swap_to_first_token_s"] - step["later_ttft_median"]
                        if step["later_ttft_median"] is not None
                        else None
                    ),
                    "inside the request" if step["in_request"] else "in-process call",
                ]
            )
    return md_table(
        [
            "system",
            "swap",
            "request for the other model → first token, s",
            "load s",
            "of which warm-up s",
            "first TTFT without the load, s",
            "later TTFT s (median)",
            "swap cost s (first token − later TTFT)",
            "load happens",
        ],
        rows,
    )


def plot_decode(
    pairs: Sequence[tuple[ModelCase, Sequence[SystemResult]]], path: Path, title: str
) -> bool:
    """Grouped bars of decode tok/s (median, min–max whiskers); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib is missing (pip install -e '.[bench]'): no plot")
        return False
    systems: list[str] = []
    for _, results in pairs:
        for r in results:
            if r.system not in systems:
                systems.append(r.system)
    width = 0.8 / max(1, len(systems))
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(pairs) + 2), 4.2), dpi=120)
    for j, name in enumerate(systems):
        xs, meds, lo, hi = [], [], [], []
        for i, (_, results) in enumerate(pairs):
            r = next((r for r in results if r.system == name), None)
            d = r.decode_spread() if r and r.ok else None
            if d and d.values:
                xs.append(i + (j - (len(systems) - 1) / 2) * width)
                meds.append(d.median)
                lo.append(d.median - d.min)
                hi.append(d.max - d.median)
        if xs:
            ax.bar(xs, meds, width, yerr=[lo, hi], capsize=3, label=name)
    ax.set_xticks(range(len(pairs)))
    ax.set_xticklabels([case.label for case, _ in pairs])
    ax.set_ylabel("decode tokens/s (median; whiskers min–max)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def dump_json(path: Path, payload: dict[str, Any]) -> None:
    def default(obj: Any) -> Any:
        if isinstance(obj, Path):
            return str(obj)
        if hasattr(obj, "to_dict"):
            return obj.to_dict()
        if hasattr(obj, "__dataclass_fields__"):
            return asdict(obj)
        return repr(obj)

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=default))
