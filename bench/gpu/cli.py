"""The arguments every GPU probe script takes (run_gpu.py documents its own)."""

from __future__ import annotations

import argparse
from pathlib import Path


def probe_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser with --tiny (small layers: a dry run), --tokenizers (gemma/, qwen/
    and smollm2/ tokenizer files; default: the test models), --work (models, logs,
    kernel caches), --out (the results JSON) and --models (shapes, comma-separated)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    p.add_argument("--tiny", action="store_true", help="small layers: a dry run")
    p.add_argument("--tokenizers", type=Path, help="folder with gemma/, qwen/ and smollm2/ tokenizer files "
                   "(python -m bench.shaped_models --export-tokenizers DIR)")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench-gpu"),
                   help="models, logs, kernel caches (default: %(default)s)")
    p.add_argument("--out", type=Path, help="the results JSON")
    p.add_argument("--models", default="qwen3-4b", help="model shapes, comma-separated (default: %(default)s)")
    return p
