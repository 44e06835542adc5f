"""Embedding/rerank pieces without a model: recognition, batching on a worker,
the memory ledger of side models, truncation and Matryoshka shortening."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from mlxhost.core.encoder_facts import encoder_facts, kind_from_config, model_kind, pooling_mode
from mlxhost.core.errors import Busy, InvalidRequest, SideModelTooLarge
from mlxhost.core.types import EMBEDDING, RERANK
from mlxhost.runtime.embedding.batcher import AGE_TURNS, EncodeBatcher
from mlxhost.runtime.memory import KVLayout, MemoryGovernor, Reservation
from mlxhost.runtime.worker import MLXWorker
from mlxhost.service.embeddings import _fit, relevance, shorten

BERT = {"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 384,
        "max_position_embeddings": 512}


# -- recognising the model ----------------------------------------------------
def test_kind_from_config():
    assert kind_from_config(BERT) == EMBEDDING
    assert kind_from_config({**BERT, "architectures": ["BertForSequenceClassification"]}) == RERANK
    assert kind_from_config({**BERT, "architectures": ["BertForMaskedLM"]}) is None
    assert kind_from_config({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}) is None


def _st_folder(tmp_path: Path, pooling: dict, normalize: bool = True, card: str = "") -> Path:
    (tmp_path / "config.json").write_text(json.dumps(BERT))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256}))
    if card:
        (tmp_path / "README.md").write_text(card)
    return tmp_path


def test_sentence_transformers_files_decide_pooling_window_and_normalization(tmp_path):
    folder = _st_folder(tmp_path, {"word_embedding_dimension": 384, "pooling_mode_cls_token": True},
                        normalize=False)
    facts = encoder_facts(folder, BERT)
    assert (facts.kind, facts.pooling, facts.normalize, facts.max_tokens, facts.dimensions) == (
        EMBEDDING, "cls", False, 256, 384)
    assert facts.matryoshka is False
    assert model_kind(folder, BERT) == EMBEDDING


def test_matryoshka_from_the_model_card(tmp_path):
    folder = _st_folder(tmp_path, {"pooling_mode_mean_tokens": True},
                        card="---\ntags:\n- loss:MatryoshkaLoss\n---\n")
    assert encoder_facts(folder, BERT).matryoshka is True


def test_pooling_modes():
    assert pooling_mode({"pooling_mode": "lasttoken"}) == "last"
    assert pooling_mode({"pooling_mode_mean_tokens": True}) == "mean"
    assert pooling_mode({}) == "mean"
    with pytest.raises(ValueError, match="max"):
        pooling_mode({"pooling_mode_max_tokens": True})


# -- request-side arithmetic --------------------------------------------------------
def test_inputs_over_the_window_name_their_index_or_are_truncated():
    ids = [[101, 5, 102], [101, *range(10), 102]]
    with pytest.raises(InvalidRequest) as error:
        _fit(ids, 6, truncate=False, field="input")
    assert error.value.param == "input[1]"
    fitted = _fit(ids, 6, truncate=True, field="input")
    assert fitted[0] == ids[0]
    assert fitted[1] == [101, 0, 1, 2, 3, 102]  # the closing special token is kept


def test_shorten_renormalizes():
    vectors = np.array([[3.0, 4.0, 12.0]], dtype=np.float32)
    short = shorten(vectors, 2)
    assert short.shape == (1, 2)
    assert np.allclose(short, [[0.6, 0.8]])


def test_relevance_is_a_sigmoid_of_one_logit():
    assert relevance([0.0]) == 0.5
    assert math.isclose(relevance([2.0]), 1 / (1 + math.exp(-2)))
    assert math.isclose(relevance([0.0, 0.0]), 0.5)


# -- memory: side models in the governor's ledger ---------------------------------------
def _governor(budget: int) -> MemoryGovernor:
    governor = MemoryGovernor(wait_timeout=0.1)
    governor.budget = budget
    layout = KVLayout(kv_heads=1, head_dim=64, dtype="float32", windows=(None,))
    governor.set_model("chat", layout, weights=600, workspace=100)
    return governor


def test_side_model_too_large_is_refused_and_counted_otherwise():
    async def scenario() -> None:
        governor = _governor(1_000_000)
        with pytest.raises(SideModelTooLarge):
            governor.admit_side("big", 999_400)  # the budget less weights and workspace: 999,300
        governor.admit_side("small", 500_000)
        assert governor.side_bytes == 500_000
        assert governor.stats()["side_models"] == 500_000
        # The chat model's room shrinks by what the side model holds.
        before = governor.tokens_fitting()
        governor.release_side("small")
        after = governor.tokens_fitting()
        assert before is not None and after is not None and after > before
    asyncio.run(scenario())


def test_side_model_that_fits_once_requests_finish_is_busy():
    async def scenario() -> None:
        governor = _governor(10_000_000)
        governor._held.append(Reservation(tokens=20_000, batched=False))  # ~10 MB of KV
        room = 10_000_000 - 700 - governor.kv_in_use()
        with pytest.raises(Busy):
            governor.admit_side("embedder", room + 1000)
    asyncio.run(scenario())


# -- batching on the worker thread ------------------------------------------------------
class RecordingModel:
    """Stands in for EncoderModel: returns each input's length, records every pass."""

    def __init__(self, events: list) -> None:
        self.events = events

    def run(self, ids, type_ids=None):
        self.events.append(("pass", [len(x) for x in ids]))
        self.events.append(("owners", {x[0] for x in ids}))
        return [np.array([len(x)], dtype=np.float32) for x in ids]

    def sync(self):
        self.events.append(("sync", None))


def test_passes_are_bounded_sorted_and_interleaved_with_decode_steps():
    events: list = []
    model = RecordingModel(events)

    async def scenario() -> list:
        worker = MLXWorker()
        worker.start()
        try:
            batcher = EncodeBatcher(worker, max_tokens=40, max_rows=4)
            steps = {"left": 30}

            def decode_step() -> bool:  # a running chat's ticker
                events.append(("step", None))
                steps["left"] -= 1
                return steps["left"] > 0

            await worker.run(lambda: worker.add_ticker(decode_step))
            inputs_a = [[1] * n for n in (9, 3, 7, 3, 5, 3, 3, 9)]
            inputs_b = [[2] * n for n in (4, 4)]
            return await asyncio.gather(batcher.run(model, inputs_a), batcher.run(model, inputs_b))
        finally:
            worker.stop()

    rows_a, rows_b = asyncio.run(scenario())
    # Every input got its own row back, in input order.
    assert [int(r[0]) for r in rows_a] == [9, 3, 7, 3, 5, 3, 3, 9]
    assert [int(r[0]) for r in rows_b] == [4, 4]
    passes = [lengths for kind, lengths in events if kind == "pass"]
    owners = [who for kind, who in events if kind == "owners"]
    assert sum(len(p) for p in passes) == 10
    for lengths in passes:
        assert (len(lengths) <= 4 and len(lengths) * max(lengths) <= 40) or len(lengths) == 1
        assert lengths == sorted(lengths)
    # Requests that arrived together shared a pass.
    assert {1, 2} in owners
    # Between two passes the decode ticker ran: never two passes in a row.
    kinds = [kind for kind, _ in events if kind not in ("owners", "sync")]
    first, last = kinds.index("pass"), len(kinds) - 1 - kinds[::-1].index("pass")
    window = kinds[first:last + 1]
    assert all(not (a == b == "pass") for a, b in itertools.pairwise(window))


def test_a_long_input_is_not_starved_by_short_ones():
    batcher = EncodeBatcher(worker=None, max_tokens=8, max_rows=8)  # type: ignore[arg-type]
    from mlxhost.runtime.embedding.batcher import _Item, _Job

    job = _Job(model=None, size=1, done=lambda rows, error: None)  # type: ignore[arg-type]
    pool = [_Item(1, seq, job, seq, [0], None) for seq in range(1, 5)]
    pool.append(_Item(8, 0, job, 0, [0] * 8, None))  # the oldest, and long
    batcher._arrived = {item.seq: 0 for item in pool}
    batcher._turn = 1
    assert [i.length for i in batcher.take(list(pool))] == [1, 1, 1, 1]  # shortest first
    batcher._turn = AGE_TURNS
    assert [i.length for i in batcher.take(list(pool))] == [8]  # aged: it goes next


def test_the_registry_serves_an_embedding_folder_by_its_files(tmp_path):
    from mlxhost.families.plugins import make_plugin_manager
    from mlxhost.models.registry import ModelRegistry
    from mlxhost.settings.table import Settings

    root = tmp_path / "models"
    (root / "minilm").mkdir(parents=True)
    _st_folder(root / "minilm", {"pooling_mode_mean_tokens": True})
    registry = ModelRegistry(make_plugin_manager(load_entrypoints=False),
                             Settings(models_dirs=[str(root)]))
    info = registry.resolve("minilm")
    assert info.capabilities == frozenset({EMBEDDING})
    assert info.family is None
    assert info.context_window == 256  # tokens per input (sentence_bert_config.json)


def test_ps_lists_the_side_models():
    from mlxhost.cli.ps import describe

    health = {"status": "ok", "model": "chat", "side_models": {"models": [
        {"model": "minilm", "kind": "embedding", "bytes": 90 << 20, "running": 1,
         "keep_alive": "30m", "unloads_in": None}]}}
    lines = dict(describe("http://x", health, None))
    assert lines["embedding"].startswith("minilm (")
    assert "1 running" in lines["embedding"]


# -- the MLX forward against transformers, on tiny random XLM-RoBERTa models ---------------
@pytest.mark.parametrize("head", ["embedding", "rerank"])
def test_xlm_roberta_matches_transformers(tmp_path, head):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from mlxhost.runtime.embedding.mlx_model import EncoderModel

    torch.manual_seed(0)
    config = transformers.XLMRobertaConfig(
        vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=1,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=1)
    cls = (transformers.XLMRobertaModel if head == "embedding"
           else transformers.XLMRobertaForSequenceClassification)
    model = cls(config).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    facts = encoder_facts(tmp_path, saved)
    assert facts.kind == head
    ids = [[0, 5, 6, 7, 2], [0, 9, 2]]
    ours = EncoderModel(tmp_path, saved, facts).run(ids)
    batch = torch.tensor([ids[0], [*ids[1], 1, 1]])
    mask = (batch != 1).long()
    with torch.no_grad():
        out = model(input_ids=batch, attention_mask=mask)
    if head == "embedding":
        pooled = (out.last_hidden_state * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        expected = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        assert np.abs(ours - expected).max() < 1e-5
    else:
        expected = torch.sigmoid(out.logits[:, 0]).tolist()
        assert [relevance(row) for row in ours] == pytest.approx(expected, abs=1e-5)
