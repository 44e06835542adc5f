"""The random-weight shapes of the GPU benchmark (bench/shaped_models.py)."""

from __future__ import annotations

import json

import pytest
from bench.shaped_models import SHAPES, TOKENIZER_FROM, _model_class, pad_tokenizer, shape_config

from mlxhost.core.types import GENERIC_FAMILY
from mlxhost.families.plugins import make_plugin_manager


@pytest.mark.parametrize("kind", sorted(SHAPES))
def test_every_shape_builds_tiny_with_its_full_vocabulary(kind):
    """The tiny dry-run version is a model mlx-lm can build, with the vocabulary
    of the real shape (the padded tokenizer must cover every id it can emit)."""
    from mlx.utils import tree_flatten

    config = shape_config(kind, tiny=True)
    module = _model_class(config["model_type"])
    args = module.ModelArgs.from_dict(config)
    model = module.Model(args)
    shapes = {name: value.shape for name, value in tree_flatten(model.parameters())}
    assert shapes["model.embed_tokens.weight"] == (SHAPES[kind]["vocab_size"], 256)
    assert args.num_hidden_layers < SHAPES[kind]["num_hidden_layers"]
    assert kind in TOKENIZER_FROM


def test_the_llama_shape_uses_llama3_rope_scaling():
    from mlx_lm.models.rope_utils import Llama3RoPE

    config = shape_config("llama-3b", tiny=True)
    module = _model_class(config["model_type"])
    model = module.Model(module.ModelArgs.from_dict(config))
    assert module.__name__ == "mlx_lm.models.llama"
    assert isinstance(model.model.layers[0].self_attn.rope, Llama3RoPE)


@pytest.mark.parametrize(("kind", "family"), [("llama-3b", GENERIC_FAMILY), ("qwen3-4b", "qwen")])
def test_which_family_serves_a_shape(kind, family):
    """No family plugin claims the Llama shape: it measures the generic path."""
    pytest.importorskip("mlxhost_qwen")
    pm = make_plugin_manager()
    assert pm.hook.mlxhost_model_family(config=shape_config(kind)) == family


def test_pad_tokenizer_fills_every_missing_id(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({
        "model": {"vocab": {"a": 0, "b": 1, "c": 3}},
        "added_tokens": [{"id": 5, "content": "<end>", "special": True}],
    }))
    assert pad_tokenizer(path, 8) == 4
    data = json.loads(path.read_text())
    ids = {0, 1, 3} | {token["id"] for token in data["added_tokens"]}
    assert ids == set(range(8))
    assert pad_tokenizer(path, 8) == 0
