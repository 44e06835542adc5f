"""Turning results into Markdown tables, the decode plot and JSON files.

``write_section`` puts the main benchmark's section into docs/benchmarks.md
(between its ``main-bench`` markers); ``dump_json`` writes a run's samples (the
input of ``python -m bench --render-only``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import docs
from bench.log import say
from bench.measure import fmt_s

if TYPE_CHECKING:
    from bench.measure import Sample
    from bench.runner import ModelCase, SwapResult, SystemResult


# --- formatting ---------------------------------------------------------------------


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append(
            "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |"
        )
    return "\n".join(lines)


def ratio(a: float | None, b: float | None, digits: int = 2) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.{digits}f}"


ENGINE_OF = {
    "mlxhost": "mlx-lm, in `mlxhost serve`",
    "mlxhost-no-openblas": "mlx-lm, in `mlxhost serve --no-openblas`",
    "mlxhost-no-warmup": "mlx-lm, in `mlxhost serve`, `MLXHOST_WARMUP=0`",
    "raw-mlx-lm": "`mlx_lm.stream_generate`, in-process",
    "raw-mlx-vlm": "`mlx_vlm.stream_generate`, in-process",
    "mlx-lm-server": "`python -m mlx_lm server`",
    "mlx-vlm-server": "`python -m mlx_vlm.server`",
}


def _prompt_tokens(samples: Sequence[Sample]) -> str:
    seen = sorted({s.prompt_tokens for s in samples if s.ok and s.prompt_tokens})
    return "/".join(str(x) for x in seen) or "?"


# --- tables ---------------------------------------------------------------------------


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
                fmt_s(r.first.ttft if r.first else None),
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
                    fmt_s(r.warmup_s) if r.warmup_s is not None else "none",
                    fmt_s(r.first.ttft),
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
                    fmt_s(step["swap_to_first_token_s"]),
                    fmt_s(step["load_s"]),
                    fmt_s(step.get("warmup_s")),
                    fmt_s(step.get("first_ttft_minus_load_s")),
                    fmt_s(step["later_ttft_median"]),
                    fmt_s(
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


# --- files ----------------------------------------------------------------------------


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


def write_section(doc: Path, body: str) -> None:
    """Replace this benchmark's section of ``doc``, leaving the rest."""
    docs.write_section(doc, "main-bench", body)


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
