"""Turning a GGUF file into an MLX model folder that ``mlx_lm.load`` accepts.

MLX cannot read K-quant GGUFs (``mx.load`` fails on them), so the weights go
GGUF -> transformers (dequantized, torch) -> Hugging Face folder -> ``mlx_lm.convert``.
This needs the ``gguf`` extra (torch, accelerate, gguf); every heavy import stays
inside the functions so importing this module is cheap.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

Log = Callable[[str], object]

# Written by save_pretrained / the tokenizer; an empty or missing one means a failed save.
_REQUIRED_OUTPUT_FILES = ("config.json", "tokenizer_config.json")


def convert_gguf(
    gguf_path: str | Path,
    out_dir: str | Path,
    *,
    dtype: str = "float32",
    quantize_bits: int | None = None,
    chat_template: str | Path | None = None,
    eos_token_ids: Sequence[int] | int | None = None,
    log: Log = print,
) -> Path:
    """Convert ``gguf_path`` into an MLX model folder at ``out_dir`` (which must not exist).

    ``dtype`` is the MLX weight dtype (``float32`` is the fast one on CPU: only fp32
    matmuls use BLAS there). ``quantize_bits`` quantizes the MLX weights afterwards.
    ``chat_template`` (a file path or the template text) replaces the GGUF's own
    template; ``eos_token_ids`` replaces ``eos_token_id`` in ``config.json`` and
    ``generation_config.json``. Returns ``out_dir``.
    """
    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    if out_dir.exists():
        raise FileExistsError(f"Output folder already exists: {out_dir}")
    template_text = _read_template(chat_template) if chat_template is not None else None

    clock = _StageClock(log)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # The intermediate HF folder (fp32 torch weights) is as big as the result: keep it
    # beside the output, on the same disk, and always remove it.
    with tempfile.TemporaryDirectory(prefix=".gguf-hf-", dir=out_dir.parent) as tmp:
        hf_dir = Path(tmp) / "hf"
        _gguf_to_hf_folder(gguf_path, hf_dir, template_text, clock)
        _hf_to_mlx_folder(hf_dir, out_dir, dtype, quantize_bits, clock)
    if template_text is not None:
        _write_chat_template(out_dir, template_text)
    if eos_token_ids is not None:
        _set_eos_token_ids(out_dir, eos_token_ids)
    _check_output(out_dir)
    clock.done(f"MLX model written to {out_dir}")
    return out_dir


class _StageClock:
    """Logs each stage with the seconds elapsed since the conversion started."""

    def __init__(self, log: Log) -> None:
        self._log = log
        self._start = time.monotonic()

    def stage(self, message: str) -> None:
        self._log(f"[gguf-convert {time.monotonic() - self._start:6.1f}s] {message}")

    done = stage


def _read_template(chat_template: str | Path) -> str:
    """A template given as a path (or a string naming an existing file) is read from disk."""
    if isinstance(chat_template, Path):
        return chat_template.read_text(encoding="utf-8")
    looks_like_path = "\n" not in chat_template and "{" not in chat_template
    if looks_like_path and Path(chat_template).is_file():
        return Path(chat_template).read_text(encoding="utf-8")
    if looks_like_path:
        raise FileNotFoundError(f"Chat template file not found: {chat_template}")
    return chat_template


def _gguf_to_hf_folder(
    gguf_path: Path, hf_dir: Path, template_text: str | None, clock: _StageClock
) -> None:
    """Dequantize the GGUF with transformers and save it as a plain fp32 HF folder."""
    clock.stage("importing torch and transformers")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    clock.stage(f"reading the tokenizer from {gguf_path.name}")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if template_text is not None:
        # Set before saving so every tokenizer file written from here on carries it.
        tokenizer.chat_template = template_text

    clock.stage("loading and dequantizing the weights (the slow part)")
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=name,
        quantization_config=GgufConfig(gguf_file=str(gguf_path), dequantize=True),
        dtype=torch.float32,
    )
    _drop_gguf_quantizer(model)

    clock.stage("saving the Hugging Face folder")
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    del model


def _drop_gguf_quantizer(model: object) -> None:
    """transformers refuses ``save_pretrained`` on a GGUF-quantized model even once the
    weights are dense; forgetting the quantizer makes it an ordinary model."""
    model.hf_quantizer = None  # type: ignore[attr-defined]
    config = model.config  # type: ignore[attr-defined]
    if hasattr(config, "quantization_config"):
        del config.quantization_config


def _hf_to_mlx_folder(
    hf_dir: Path, out_dir: Path, dtype: str, quantize_bits: int | None, clock: _StageClock
) -> None:
    clock.stage(f"converting to MLX ({dtype}{f', {quantize_bits}-bit' if quantize_bits else ''})")
    from mlx_lm.convert import convert

    convert(
        str(hf_dir),
        str(out_dir),
        dtype=dtype,
        quantize=quantize_bits is not None,
        q_bits=quantize_bits,
    )


def _write_chat_template(out_dir: Path, template_text: str) -> None:
    """Make sure the template is the one ``apply_chat_template`` uses.

    transformers 5 reads ``chat_template.jinja`` before the key in
    ``tokenizer_config.json``; write both so older readers agree too.
    """
    (out_dir / "chat_template.jinja").write_text(template_text, encoding="utf-8")
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["chat_template"] = template_text
    _write_json(config_path, config)


def _set_eos_token_ids(out_dir: Path, eos_token_ids: Sequence[int] | int) -> None:
    """mlx-lm stops on ``config.json``'s ``eos_token_id``; generation_config is for others."""
    ids = [eos_token_ids] if isinstance(eos_token_ids, int) else [int(i) for i in eos_token_ids]
    value: int | list[int] = ids[0] if len(ids) == 1 else ids
    for name in ("config.json", "generation_config.json"):
        path = out_dir / name
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        data["eos_token_id"] = value
        _write_json(path, data)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _check_output(out_dir: Path) -> None:
    missing = [n for n in _REQUIRED_OUTPUT_FILES if not (out_dir / n).is_file()]
    if missing or not list(out_dir.glob("model*.safetensors")):
        raise RuntimeError(f"Conversion left an incomplete folder {out_dir} (missing {missing})")
