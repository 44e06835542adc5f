"""Tiny randomly-initialised VLMs of the two real architectures, for image-pipeline tests.

Same ``model_type``s and config keys as the models mlxhost serves by default
(Gemma 3 4B-it and Qwen3-VL 4B-Instruct, see ``reference/*/config.facts.json``),
with toy sizes: they load with ``mlx_vlm.load`` and run the whole image path
(decode -> placement -> expansion to N image tokens -> vision tower ->
language model) in well under a second on CPU, but say nothing meaningful.

No torch and no hub: weights come from NumPy with a fixed seed (deterministic
builds), and the tokenizers are the real ones, taken from the converted text
test models (``mlxhost.models.starter.builder``):

- ``gemma3``: Gemma's tokenizer plus ``<image_soft_token>`` (id 262144) as in the
  real Gemma 3 VLMs; SigLIP tower 112 px / patch 14 -> 8x8 patches, pooled 2x2
  into ``mm_tokens_per_image`` = 16 image tokens, whatever the image size.
- ``qwen3_vl``: Qwen's tokenizer (it already has ``<|image_pad|>`` & co.);
  patch 16, merge 2, so one image token per 32x32 px of the resized image, and
  images are resized to 64x64 .. 128x128 px worth of area: 4..16 tokens (more
  for very thin images: 30x900 px gives 1x21). ``expected_image_tokens`` computes it.

    python -m mlxhost.testing.vlm_models [gemma3 qwen3_vl]
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import typing
import zlib
from dataclasses import dataclass
from pathlib import Path

from mlxhost.models.starter.builder import (
    DATA_DIR,
    Log,
    build_named,
    ensure_built,
    ensure_test_model,
    models_cache_dir,
)

# The Qwen3-VL template is used only here; Gemma's is shared with the builder (DATA_DIR).
TESTING_DATA_DIR = Path(__file__).parent / "data"

# Bump when the recipe changes what ends up in a folder: the version is part of
# the folder name, so an older build is simply not found (and a new one made).
VLM_RECIPE_VERSION = 1
SEED = 20240601

TINY_VLMS: dict[str, str] = {
    "gemma3": "mlxhost-test/tiny-gemma3-vlm",
    "qwen3_vl": "mlxhost-test/tiny-qwen3-vl",
}

# The text model of every tiny VLM: two layers of 64 wide, grouped-query attention.
TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
}

# --- gemma3 -------------------------------------------------------------------

GEMMA_IMAGE_TOKEN = "<image_soft_token>"
GEMMA_IMAGE_TOKEN_ID = 262144
GEMMA_BOI_TOKEN_ID = 255999  # <start_of_image>
GEMMA_EOI_TOKEN_ID = 256000  # <end_of_image>
GEMMA_IMAGE_SIZE = 112
GEMMA_PATCH_SIZE = 14
GEMMA_MM_TOKENS_PER_IMAGE = 16  # 8x8 patches, average-pooled 2x2 -> 4x4

GEMMA_CONFIG: dict = {
    "architectures": ["Gemma3ForConditionalGeneration"],
    "model_type": "gemma3",
    "boi_token_index": GEMMA_BOI_TOKEN_ID,
    "eoi_token_index": GEMMA_EOI_TOKEN_ID,
    "image_token_index": GEMMA_IMAGE_TOKEN_ID,
    "eos_token_id": [1, 106],
    "mm_tokens_per_image": GEMMA_MM_TOKENS_PER_IMAGE,
    "initializer_range": 0.02,
    "torch_dtype": "float32",
    "text_config": {
        "model_type": "gemma3_text",
        **TINY_TEXT,
        "vocab_size": 262208,
        "sliding_window": 512,
        # Every 2nd layer global, so both kinds run. mlx-vlm's Gemma3Model reads
        # cache[sliding_window_pattern - 1]: the pattern must not exceed the layer count.
        "sliding_window_pattern": 2,
        "max_position_embeddings": 131072,
        "query_pre_attn_scalar": 32,
        "rope_theta": 1000000,
        "rope_local_base_freq": 10000,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "rms_norm_eps": 1e-06,
        "hidden_activation": "gelu_pytorch_tanh",
        # mlx-vlm's projector reads this from text_config only (default 256, the
        # real value, which is why the real config can keep it top-level alone).
        "mm_tokens_per_image": GEMMA_MM_TOKENS_PER_IMAGE,
    },
    "vision_config": {
        "model_type": "siglip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "image_size": GEMMA_IMAGE_SIZE,
        "patch_size": GEMMA_PATCH_SIZE,
        "num_channels": 3,
        "vision_use_head": False,
    },
}


def _gemma_preprocessor(image_size: int, mm_tokens: int) -> dict:
    return {
        "image_processor_type": "Gemma3ImageProcessor",
        "processor_class": "Gemma3Processor",
        "do_convert_rgb": None,
        "do_normalize": True,
        "do_pan_and_scan": None,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "image_seq_length": mm_tokens,
        "pan_and_scan_max_num_crops": None,
        "pan_and_scan_min_crop_size": None,
        "pan_and_scan_min_ratio_to_activate": None,
        "resample": 2,
        "rescale_factor": 1 / 255,
        "size": {"height": image_size, "width": image_size},
    }


GEMMA_PREPROCESSOR = _gemma_preprocessor(GEMMA_IMAGE_SIZE, GEMMA_MM_TOKENS_PER_IMAGE)

# --- gemma3 with the real vision tower (benchmarks only) -----------------------
#
# Image-prompt timings on the tiny VLMs are all fixed cost (~20 ms). This one
# has gemma-3-4b-it's vision tower as is (SigLIP so400m: 27 layers, 896 px,
# 4096 patches pooled into 256 image tokens; shared/reference/gemma-3-4b-it)
# and the text tower of Gemma 3 270M (what 2 CPU cores and RAM can take), with
# random fp32 weights: ~2.6 GB, built in about a minute. Never built by tests.

SHAPED_GEMMA_NAME = "gemma3-4b-vision-270m-text"
SHAPED_GEMMA_REPO_ID = "mlxhost-bench/gemma3-4b-vision-270m-text"
SHAPED_GEMMA_IMAGE_SIZE = 896
SHAPED_GEMMA_MM_TOKENS_PER_IMAGE = 256  # 64x64 patches, average-pooled 4x4 -> 16x16


def _shaped_gemma_config() -> dict:
    config = json.loads(json.dumps(GEMMA_CONFIG))
    config["mm_tokens_per_image"] = SHAPED_GEMMA_MM_TOKENS_PER_IMAGE
    config["text_config"].update(
        {  # Gemma 3 270M (its config.json), with the VLM's vocabulary (+ image tokens)
            "hidden_size": 640,
            "intermediate_size": 2048,
            "num_hidden_layers": 18,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 256,
            "query_pre_attn_scalar": 256,
            "sliding_window": 512,
            "sliding_window_pattern": 6,
            "mm_tokens_per_image": SHAPED_GEMMA_MM_TOKENS_PER_IMAGE,
        }
    )
    config["text_config"].pop("rope_scaling")  # 270M: none
    config["vision_config"] = {  # gemma-3-4b-it's, unchanged
        "model_type": "siglip_vision_model",
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_attention_heads": 16,
        "num_hidden_layers": 27,
        "image_size": SHAPED_GEMMA_IMAGE_SIZE,
        "patch_size": 14,
        "num_channels": 3,
        "vision_use_head": False,
    }
    return config


SHAPED_GEMMA_CONFIG: dict = _shaped_gemma_config()


def ensure_shaped_gemma3_vlm(
    cache_dir: str | Path,
    log: Log = print,
    *,
    text_models_dir: str | Path | None = None,
) -> Path:
    """The folder of the gemma3 VLM with the real 4B vision tower, built once into ``cache_dir``.

    Same recipe as the tiny ``gemma3`` (random weights from a fixed seed, the
    Gemma test model's tokenizer plus ``<image_soft_token>``), other sizes.
    """
    text_cache = Path(text_models_dir) if text_models_dir is not None else models_cache_dir()

    def build(out: Path) -> None:
        log(f"building {SHAPED_GEMMA_NAME} into {out} (~2.6 GB)")
        out.mkdir(parents=True)
        _build_gemma3(out, text_cache, log, SHAPED_GEMMA_CONFIG)

    folder = f"{SHAPED_GEMMA_NAME}-v{VLM_RECIPE_VERSION}"
    return ensure_built(Path(cache_dir), folder, build, log=log)


# --- qwen3_vl -----------------------------------------------------------------

QWEN_IMAGE_TOKEN_ID = 151655  # <|image_pad|>
QWEN_PATCH_SIZE = 16
QWEN_MERGE_SIZE = 2
QWEN_MIN_PIXELS = 64 * 64  # at least 2x2 = 4 image tokens
QWEN_MAX_PIXELS = 128 * 128  # at most 16 image tokens (a 4x4 grid)

QWEN_CONFIG: dict = {
    "architectures": ["Qwen3VLForConditionalGeneration"],
    "model_type": "qwen3_vl",
    "image_token_id": QWEN_IMAGE_TOKEN_ID,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
    "text_config": {
        "model_type": "qwen3_vl_text",
        **TINY_TEXT,
        "vocab_size": 151936,
        "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-06,
        "rope_theta": 5000000,
        # The sections split head_dim / 2 = 16 rotary frequencies over (t, h, w).
        "rope_scaling": {
            "mrope_interleaved": True,
            "mrope_section": [6, 5, 5],
            "rope_type": "default",
        },
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "hidden_act": "silu",
        "attention_bias": False,
        "tie_word_embeddings": True,
    },
    "vision_config": {
        "model_type": "qwen3_vl",
        "depth": 3,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "in_channels": 3,
        "patch_size": QWEN_PATCH_SIZE,
        "temporal_patch_size": 2,
        "spatial_merge_size": QWEN_MERGE_SIZE,
        "out_hidden_size": 64,  # = text hidden_size
        "num_position_embeddings": 64,  # an 8x8 grid, interpolated to each image's grid
        "deepstack_visual_indexes": [0, 1],  # fed into text layers 0 and 1
        "hidden_act": "gelu_pytorch_tanh",
    },
}

# How images and video frames alike are cut into patches and normalized.
QWEN_PATCHING = {
    "patch_size": QWEN_PATCH_SIZE,
    "temporal_patch_size": 2,
    "merge_size": QWEN_MERGE_SIZE,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}

QWEN_PREPROCESSOR = {
    "image_processor_type": "Qwen2VLImageProcessorFast",
    "processor_class": "Qwen3VLProcessor",
    **QWEN_PATCHING,
    "size": {"shortest_edge": QWEN_MIN_PIXELS, "longest_edge": QWEN_MAX_PIXELS},
}

QWEN_VIDEO_PREPROCESSOR = {
    "video_processor_type": "Qwen3VLVideoProcessor",
    "processor_class": "Qwen3VLProcessor",
    **QWEN_PATCHING,
    "size": {"shortest_edge": QWEN_MIN_PIXELS, "longest_edge": 4 * QWEN_MAX_PIXELS},
    "fps": 2,
    "min_frames": 2,
    "max_frames": 8,
}


def expected_image_tokens(name: str, width: int, height: int) -> int:
    """How many image tokens tiny VLM ``name`` expands one ``width`` x ``height`` image to.

    The processors' own arithmetic (mlx-vlm 0.7.10), without loading anything.
    Gemma also adds ``<start_of_image>``/``<end_of_image>`` and two ``\\n\\n``
    around them; Qwen keeps the template's ``<|vision_start|>``/``<|vision_end|>``.
    """
    _spec(name)
    if name == "gemma3":
        return GEMMA_MM_TOKENS_PER_IMAGE  # resized to 112x112 whatever the size
    if max(width, height) / min(width, height) > 200:
        raise ValueError("Qwen's processor refuses aspect ratios over 200")
    factor = QWEN_PATCH_SIZE * QWEN_MERGE_SIZE  # Qwen's smart_resize
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > QWEN_MAX_PIXELS:
        beta = math.sqrt(height * width / QWEN_MAX_PIXELS)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < QWEN_MIN_PIXELS:
        beta = math.sqrt(QWEN_MIN_PIXELS / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return (h // factor) * (w // factor)


@dataclass(frozen=True)
class TinyVLMSpec:
    name: str
    repo_id: str
    folder_name: str


def _spec(name: str) -> TinyVLMSpec:
    if name not in TINY_VLMS:
        raise KeyError(f"unknown tiny VLM {name!r}; choose from {list(TINY_VLMS)}")
    repo_id = TINY_VLMS[name]
    return TinyVLMSpec(name, repo_id, f"{repo_id.split('/')[-1]}-v{VLM_RECIPE_VERSION}")


def ensure_tiny_vlm(
    name: str,
    cache_dir: str | Path | None = None,
    log: Log = print,
    *,
    text_models_dir: str | Path | None = None,
) -> Path:
    """The folder of tiny VLM ``name`` (``gemma3`` or ``qwen3_vl``), built (seconds) if missing.

    Built into ``cache_dir`` (default: ``models_cache_dir()``) with the same
    locked, atomic ``ensure_built`` as the text test models. The tokenizer comes
    from the matching text test model in ``text_models_dir`` (default:
    ``models_cache_dir()``, wherever ``cache_dir`` is), which
    ``ensure_test_model`` builds (minutes, once per machine) if it is missing.
    """
    spec = _spec(name)
    cache = Path(cache_dir) if cache_dir is not None else models_cache_dir()
    text_cache = Path(text_models_dir) if text_models_dir is not None else models_cache_dir()
    builder = {"gemma3": _build_gemma3, "qwen3_vl": _build_qwen3_vl}[name]

    def build(out: Path) -> None:
        log(f"building tiny VLM {name!r} into {out}")
        out.mkdir(parents=True)
        builder(out, text_cache, log)

    return ensure_built(cache, spec.folder_name, build, log=log)


# --- builders -----------------------------------------------------------------


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _source_tokenizer(text_model: str, cache: Path, log: Log) -> tuple[Path, dict, dict]:
    """(folder, tokenizer.json, tokenizer_config.json) of a text test model."""
    folder = ensure_test_model(text_model, cache_dir=cache, log=log)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    return folder, tokenizer, tokenizer_config


def _build_gemma3(out: Path, cache: Path, log: Log, config: dict = GEMMA_CONFIG) -> None:
    from mlx_vlm.models import gemma3

    mm_tokens = config["mm_tokens_per_image"]
    image_size = config["vision_config"]["image_size"]

    _, tokenizer, tok_config = _source_tokenizer("gemma", cache, log)
    vocab = tokenizer["model"]["vocab"]
    for token, want in (
        ("<start_of_image>", GEMMA_BOI_TOKEN_ID),
        ("<end_of_image>", GEMMA_EOI_TOKEN_ID),
    ):
        if vocab.get(token) != want:
            raise RuntimeError(
                f"Gemma tokenizer has {token} as {vocab.get(token)}, expected {want}"
            )
    added = tokenizer["added_tokens"]
    if not any(t["content"] == GEMMA_IMAGE_TOKEN for t in added):
        next_id = max(max(vocab.values()), max(t["id"] for t in added)) + 1
        if next_id != GEMMA_IMAGE_TOKEN_ID:
            raise RuntimeError(
                f"{GEMMA_IMAGE_TOKEN} would get id {next_id}, not {GEMMA_IMAGE_TOKEN_ID}"
            )
        added.append(
            {
                "id": GEMMA_IMAGE_TOKEN_ID,
                "content": GEMMA_IMAGE_TOKEN,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
        )
    # Compact: 14 MB instead of 33 MB indented.
    (out / "tokenizer.json").write_text(
        json.dumps(tokenizer, ensure_ascii=False, separators=(",", ":"))
    )

    template = (DATA_DIR / "gemma3_chat_template.jinja").read_text()
    tok_config = {k: v for k, v in tok_config.items() if k not in ("is_local", "local_files_only")}
    tok_config.update(
        {
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": GEMMA_IMAGE_TOKEN,
            "extra_special_tokens": {
                "boi_token": "<start_of_image>",
                "eoi_token": "<end_of_image>",
                "image_token": GEMMA_IMAGE_TOKEN,
            },
            "processor_class": "Gemma3Processor",
            "chat_template": template,
        }
    )
    _write_json(out / "tokenizer_config.json", tok_config)
    (out / "chat_template.jinja").write_text(template)
    _write_json(out / "preprocessor_config.json", _gemma_preprocessor(image_size, mm_tokens))
    _write_json(
        out / "processor_config.json",
        {"image_seq_length": mm_tokens, "processor_class": "Gemma3Processor"},
    )
    _write_json(out / "config.json", config)
    _write_json(
        out / "generation_config.json",
        {"bos_token_id": 2, "eos_token_id": [1, 106], "pad_token_id": 0, "do_sample": False},
    )
    _save_random_weights(gemma3, config, out / "model.safetensors", _gemma3_init)
    if config is GEMMA_CONFIG:
        (out / "README.md").write_text(_readme("gemma3"))
    else:
        (out / "README.md").write_text(
            f"# {SHAPED_GEMMA_REPO_ID}\n\nRandom fp32 weights: gemma-3-4b-it's vision tower, "
            "Gemma 3 270M's text tower (mlxhost.testing.vlm_models); for speed "
            "measurements only, its outputs are noise.\n"
        )


def _build_qwen3_vl(out: Path, cache: Path, log: Log) -> None:
    from mlx_vlm.models import qwen3_vl

    source, tokenizer, tok_config = _source_tokenizer("qwen", cache, log)
    ids = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    for token, want in (
        ("<|vision_start|>", 151652),
        ("<|vision_end|>", 151653),
        ("<|image_pad|>", QWEN_IMAGE_TOKEN_ID),
        ("<|video_pad|>", 151656),
        ("<|im_end|>", 151645),
    ):
        if ids.get(token) != want:
            raise RuntimeError(f"Qwen tokenizer has {token} as {ids.get(token)}, expected {want}")
    shutil.copyfile(source / "tokenizer.json", out / "tokenizer.json")  # used as is

    template = (TESTING_DATA_DIR / "qwen3_vl_chat_template.jinja").read_text()
    tok_config = {
        k: v
        for k, v in tok_config.items()
        if k not in ("is_local", "local_files_only", "tool_parser_type")
    }
    tok_config.update(
        {
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "processor_class": "Qwen3VLProcessor",
            "chat_template": template,
        }
    )
    _write_json(out / "tokenizer_config.json", tok_config)
    (out / "chat_template.jinja").write_text(template)
    _write_json(out / "preprocessor_config.json", QWEN_PREPROCESSOR)
    _write_json(out / "video_preprocessor_config.json", QWEN_VIDEO_PREPROCESSOR)
    # Present so mlx-vlm's Qwen processor never asks the hub for it.
    _write_json(out / "processor_config.json", {"processor_class": "Qwen3VLProcessor"})
    _write_json(out / "config.json", QWEN_CONFIG)
    _write_json(
        out / "generation_config.json",
        {
            "bos_token_id": 151643,
            "eos_token_id": [151645, 151643],
            "pad_token_id": 151643,
            "do_sample": False,
        },
    )
    _save_random_weights(qwen3_vl, QWEN_CONFIG, out / "model.safetensors", _qwen3_vl_init)
    (out / "README.md").write_text(_readme("qwen3_vl"))


def _readme(name: str) -> str:
    return (
        f"# {TINY_VLMS[name]}\n\nTiny randomly-initialised {name} VLM for tests "
        "(mlxhost.testing.vlm_models); its outputs are noise.\n"
    )


# --- random weights -------------------------------------------------------------


def _gemma3_init(key: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(mean, std) for one parameter of mlx-vlm's gemma3 Model."""
    if key.endswith(".bias"):
        return 0.0, 0.0
    if key.startswith("vision_tower.") and ("layer_norm" in key or "post_layernorm" in key):
        return 1.0, 0.0  # SigLIP LayerNorm weights
    if "post_attention_layernorm" in key:
        # Gemma's RMSNorm scales by (1 + weight). A loud attention branch makes
        # the context (the image) outweigh the current token's own embedding,
        # so different images tend to change the greedy tokens, not just the logits.
        return 7.0, 0.1
    if len(shape) == 1:
        return 0.0, 0.1  # other RMSNorms: near identity
    if key.endswith("mm_input_projection_weight"):  # (vision hidden, text hidden), used as x @ W
        return 0.0, shape[0] ** -0.5
    return 0.0, _fan_in(shape) ** -0.5


def _qwen3_vl_init(key: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(mean, std) for one parameter of mlx-vlm's qwen3_vl Model."""
    if key.endswith(".bias"):
        return 0.0, 0.0
    if len(shape) == 1:  # RMSNorm / LayerNorm weights multiply directly
        return 1.0, 0.0
    return 0.0, _fan_in(shape) ** -0.5


def _fan_in(shape: tuple[int, ...]) -> int:
    """MLX layouts: Linear (out, in), Conv (out, *kernel, in), Embedding (n, dim)."""
    n = 1
    for d in shape[1:]:
        n *= d
    return n


def _save_random_weights(module, config: dict, path: Path, init) -> None:
    """Instantiate mlx-vlm's model class from ``config`` and save random values for its parameters.

    The names are the model's own parameter paths (``language_model.model...``,
    ``vision_tower.vision_model...``), in MLX layouts, which is what ``mlx_vlm.load``
    expects after its ``sanitize`` steps (they leave such names and layouts alone).
    Gemma's ``language_model.lm_head`` is left out: the loader ties it to the
    embeddings, as for the real checkpoints.
    """
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten
    from mlx_vlm.utils import update_module_configs

    config = json.loads(json.dumps(config))  # the config classes may edit nested dicts
    model_config = module.ModelConfig.from_dict(config)
    model_config = update_module_configs(model_config, module, config, ["text", "vision"])
    model = module.Model(model_config)
    flat: list[tuple[str, typing.Any]] = tree_flatten(model.parameters())  # type: ignore[assignment]
    shapes = {k: tuple(v.shape) for k, v in flat}

    weights = {}
    for key in sorted(shapes):
        if key == "language_model.lm_head.weight" and config["model_type"] == "gemma3":
            continue
        shape = shapes[key]
        mean, std = init(key, shape)
        if std == 0:
            value = np.full(shape, mean, dtype=np.float32)
        else:
            # One generator per tensor, seeded by its name: the values do not
            # depend on which other parameters exist or on their order.
            rng = np.random.default_rng([SEED, zlib.crc32(key.encode())])
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(std) + np.float32(
                mean
            )
        weights[key] = mx.array(value)
    mx.save_safetensors(str(path), weights, metadata={"format": "mlx"})


def main(argv: list[str] | None = None) -> int:
    names = argv if argv is not None else sys.argv[1:]
    return build_named(names, TINY_VLMS, ensure_tiny_vlm, "tiny VLM(s)")


if __name__ == "__main__":
    raise SystemExit(main())
