"""Tiny random-weight models of the architectures people run, for the generic family's tests.

Each :class:`TinyArch` names an mlx-lm ``model_type``, a small config for it,
the real chat template of its family (``tests/unit/data/chat_templates``,
provenance in SOURCES.md there) and the tokenizer it borrows from a test model
(``mlxhost.models.starter.builder.models_cache_dir()``): the families' own tokenizers are tens of MB
to fetch, so a model of the same vocabulary family stands in where there is one
(Qwen for Qwen, Gemma 3 for Gemma 4), and SmolLM2's small BPE elsewhere. The
weights are built at test time (a second or two each; nothing large in git):
mlx-lm's own model class with its random initialisation, saved as safetensors,
then loaded back through the same loader the server uses.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from mlxhost.models.starter.builder import models_cache_dir

# The built test models ($MLXHOST_TEST_MODELS, else ~/.cache/mlxhost/test-models).
TEST_MODELS = models_cache_dir()
QWEN_TOKENIZER = "Qwen2.5-Coder-0.5B-Instruct-fp32"
GEMMA_TOKENIZER = "gemma-3-270m-fp32"
SMOL_TOKENIZER = "SmolLM2-135M-Instruct-fp32"

_SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "max_position_embeddings": 4096}


@attrs.frozen
class TinyArch:
    name: str
    model_type: str
    # The chat template file (None: the tokenizer's own).
    template: str | None
    tokenizer: str
    tool_format: str | None
    config: Mapping[str, Any]


ARCHS: tuple[TinyArch, ...] = (
    TinyArch("qwen3_next", "qwen3_next", "qwen3-coder.jinja", QWEN_TOKENIZER, "qwen3_coder", {
        **_SMALL, "intermediate_size": 128, "linear_num_value_heads": 2, "linear_num_key_heads": 2,
        "linear_key_head_dim": 16, "linear_value_head_dim": 16, "linear_conv_kernel_dim": 4,
        "num_experts": 4, "num_experts_per_tok": 2, "decoder_sparse_step": 1,
        "shared_expert_intermediate_size": 64, "mlp_only_layers": [], "moe_intermediate_size": 32,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "partial_rotary_factor": 0.25, "head_dim": 16,
        "full_attention_interval": 2,
    }),
    TinyArch("gemma4_text", "gemma4_text", "gemma-4.jinja", GEMMA_TOKENIZER, "gemma4", {
        **_SMALL, "intermediate_size": 128, "head_dim": 16, "global_head_dim": 32,
        "num_key_value_heads": 1, "num_kv_shared_layers": 0, "hidden_size_per_layer_input": 8,
        "sliding_window": 64, "sliding_window_pattern": 2, "layer_types": None,
        "use_double_wide_mlp": False,
    }),
    TinyArch("llama (SmolLM2)", "llama", None, SMOL_TOKENIZER, "default", {
        **_SMALL, "intermediate_size": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": True,
    }),
    TinyArch("llama (Llama 3.2)", "llama", "llama-3.2-json.jinja", SMOL_TOKENIZER, "llama3_json", {
        **_SMALL, "intermediate_size": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": True,
    }),
    TinyArch("ministral3", "ministral3", "mistral-small-3.1-24b-instruct-2503.jinja", SMOL_TOKENIZER,
             "mistral", {**_SMALL, "intermediate_size": 128, "rms_norm_eps": 1e-5, "head_dim": 16,
                         "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default",
                                             "llama_4_scaling_beta": 0.0,
                                             "original_max_position_embeddings": 4096}}),
    TinyArch("glm4_moe", "glm4_moe", "glm-4.6.jinja", QWEN_TOKENIZER, "glm47", {
        **_SMALL, "intermediate_size": 128, "moe_intermediate_size": 32, "norm_topk_prob": True,
        "n_group": 1, "head_dim": 16, "topk_group": 1, "n_shared_experts": 1, "n_routed_experts": 4,
        "routed_scaling_factor": 1.0, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None, "use_qk_norm": True,
        "tie_word_embeddings": False, "attention_bias": False, "partial_rotary_factor": 0.5,
    }),
    TinyArch("phi3", "phi3", "phi-4-mini-instruct.jinja", SMOL_TOKENIZER, "phi4_mini", {
        **_SMALL, "intermediate_size": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": True,
    }),
    TinyArch("lfm2", "lfm2", "lfm2.5-8b-a1b.jinja", SMOL_TOKENIZER, "pythonic", {
        **_SMALL, "norm_eps": 1e-5, "conv_bias": False, "conv_L_cache": 3, "block_dim": 64,
        "block_multiple_of": 16, "block_ffn_dim_multiplier": 1.0, "block_auto_adjust_ff_dim": False,
        "block_ff_dim": 128, "full_attn_idxs": [1],
    }),
    TinyArch("minimax", "minimax", "minimax-m2.jinja", QWEN_TOKENIZER, "minimax_m2", {
        **_SMALL, "intermediate_size": 32, "num_experts_per_tok": 2, "num_local_experts": 4,
        "shared_intermediate_size": 0, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "rotary_dim": 8,
        "head_dim": 16,
    }),
)


def _vocab_size(tokenizer_dir: Path) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(tokenizer_dir))


def build_tiny_arch(arch: TinyArch, out: Path, templates: Path) -> Path:
    """The model folder of ``arch`` under ``out`` (built once per folder)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    folder = out / arch.name.replace(" ", "-").replace("(", "").replace(")", "")
    if (folder / "model.safetensors").is_file():
        return folder
    source = TEST_MODELS / arch.tokenizer
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "tokenizer.json", folder / "tokenizer.json")
    # The donor's tokenizer_config without what belongs to the donor's template:
    # its template and the tool parser mlx-lm inferred from it at conversion.
    tok_config = json.loads((source / "tokenizer_config.json").read_text())
    for key in ("chat_template", "tool_parser_type"):
        tok_config.pop(key, None)
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=1))
    if arch.template is None:
        shutil.copy(source / "chat_template.jinja", folder / "chat_template.jinja")
    else:
        shutil.copy(templates / arch.template, folder / "chat_template.jinja")
    vocab = _vocab_size(folder)
    config = {"model_type": arch.model_type, "vocab_size": vocab, **arch.config}
    model_class, args_class = _get_classes(config)
    mx.random.seed(0)
    model = model_class(args_class.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(folder / "model.safetensors"), weights)
    eos = json.loads((source / "config.json").read_text()).get("eos_token_id")
    (folder / "config.json").write_text(json.dumps({**config, "eos_token_id": eos}, indent=1))
    return folder


def build_tiny_qwen3_5_vlm(out: Path) -> Path:
    """A tiny random Qwen3.5 VLM (mlx-vlm ``qwen3_5``: gated-delta text layers and a
    Qwen3-VL vision tower; no family plugin claims it, so the generic family serves
    it). The tokenizer, processor files and chat template are the tiny Qwen3-VL
    test model's (Qwen's vocabulary, whose vision tokens Qwen3.5 shares by name)."""
    import copy

    from mlx_vlm.models import qwen3_5

    from mlxhost.testing.vlm_models import (
        QWEN_CONFIG,
        _qwen3_vl_init,
        _save_random_weights,
        ensure_tiny_vlm,
    )

    folder = out / "qwen3_5-vlm"
    if (folder / "model.safetensors").is_file():
        return folder
    shutil.copytree(ensure_tiny_vlm("qwen3_vl"), folder, ignore=shutil.ignore_patterns("model.safetensors"))
    config = copy.deepcopy(QWEN_CONFIG)
    config.update(architectures=["Qwen3_5ForConditionalGeneration"], model_type="qwen3_5", vocab_size=151936)
    text = config["text_config"]
    text.pop("rope_scaling", None)
    text.update(
        model_type="qwen3_5_text", linear_num_value_heads=2, linear_num_key_heads=2,
        linear_key_head_dim=16, linear_value_head_dim=16, linear_conv_kernel_dim=4,
        full_attention_interval=2,
        rope_parameters={"type": "default", "mrope_section": [2, 1, 1], "rope_theta": 5000000,
                         "partial_rotary_factor": 0.25, "mrope_interleaved": True},
    )
    config["vision_config"].update(model_type="qwen3_5", deepstack_visual_indexes=[])
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    _save_random_weights(qwen3_5, config, folder / "model.safetensors", _qwen3_vl_init)
    return folder
