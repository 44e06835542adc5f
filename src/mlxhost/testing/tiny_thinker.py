"""A tiny random-weight Qwen3 that 'thinks': mlx-lm's real ``qwen3`` model code,
the Qwen2.5 test model's tokenizer with Qwen3's four added tokens, and a thinking
chat template, built in a few seconds for tests of the reasoning path over HTTP.

The tokenizer: the Qwen2.5 test model's vocabulary pads ids 151665-151935
(``[PAD151665]`` …); the four pads at 151665-151668 are renamed to Qwen3's
``<tool_response>``, ``</tool_response>``, ``<think>``, ``</think>``, so the
markers have the ids they have in Qwen3. Random weights never write ``<think>``
of their own accord: the template decides (one that opens the think block in
the generation prompt makes every reply start inside a thought), and the
request's thinking budget closes it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

QWEN3_ADDED = {151665: "<tool_response>", 151666: "</tool_response>", 151667: "<think>",
               151668: "</think>"}


def build_tiny_thinker(out: Path, tokenizer_source: Path, chat_template: str) -> Path:
    """Write the model folder ``out`` (config, fp32 weights, tokenizer files with
    ``chat_template``) and return it."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import qwen3

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = json.loads((tokenizer_source / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    for token_id, content in QWEN3_ADDED.items():
        pad = f"[PAD{token_id}]"
        if vocab.get(pad) == token_id:
            del vocab[pad]
        vocab[content] = token_id
        tokenizer["added_tokens"].append({
            "id": token_id, "content": content, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False, "special": False})
    (out / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    config = json.loads((tokenizer_source / "tokenizer_config.json").read_text())
    config["chat_template"] = chat_template
    config["added_tokens_decoder"] = {
        str(i): {"content": c, "special": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "single_word": False} for i, c in QWEN3_ADDED.items()}
    (out / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))
    vocab_size = max(vocab.values()) + 1
    model_config = {
        "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "hidden_size": 64,
        "num_hidden_layers": 2, "intermediate_size": 128, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 32, "rms_norm_eps": 1e-6,
        "vocab_size": vocab_size, "max_position_embeddings": 4096, "rope_theta": 1000000.0,
        "tie_word_embeddings": True, "torch_dtype": "float32", "eos_token_id": 151645,
    }
    (out / "config.json").write_text(json.dumps(model_config))
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": [151645, 151643]}))
    mx.random.seed(0)
    args = qwen3.ModelArgs(**{k: v for k, v in model_config.items()
                              if k not in ("architectures", "torch_dtype", "eos_token_id")})
    model = qwen3.Model(args)
    mx.eval(model.parameters())
    mx.save_safetensors(str(out / "model.safetensors"), dict(tree_flatten(model.parameters())))
    for name in ("vocab.json", "merges.txt"):
        if (tokenizer_source / name).exists():
            shutil.copy(tokenizer_source / name, out / name)
    return out
