"""runtime.cpu_split: batched decode steps with each large fp32 weight split
across the cores, on a tiny random fp32 Qwen3 (real mlx-lm model code, CPU)."""

from __future__ import annotations

import attrs
import pytest

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")

from mlxhost.engine import cpu_split, kernels
from mlxhost.testing.tiny_text import TokenNames
from mlxhost.testing.tiny_text import tiny_qwen3 as tiny_fp32


@attrs.define
class FakeBlas:
    """Records thread counts instead of changing a real OpenBLAS."""

    threads: int = 2
    calls: list[int] = attrs.Factory(list)

    def set_threads(self, count: int) -> None:
        self.calls.append(count)

    def get_threads(self) -> int:
        return self.calls[-1] if self.calls else self.threads


def logits(model, tokens):
    out = model(mx.array(tokens))
    mx.eval(out)
    return out


@pytest.mark.parametrize("tie", [True, False])
def test_split_layers_give_the_stock_results_and_switch_back(tie):
    model = tiny_fp32(tie)
    blas = FakeBlas()
    layers = cpu_split.split_layers(model, blas, 2)  # type: ignore[arg-type]
    stock_types = {id(m): type(m) for m, _, _ in layers.layers}
    # The projections, the MLP and the embedding (the tied LM head) or the LM head;
    # the 2 KV heads' projections (64 rows) too.
    assert len(layers) == 2 * 7 + (1 if tie else 2)
    rows = [[5, 17, 300, 2]] * 8
    stock = logits(model, rows)
    layers.set_split(True)
    assert blas.calls == [1]
    assert all(type(m) is not stock_types[id(m)] and isinstance(m, stock_types[id(m)]) for m, _, _ in layers.layers)
    split = logits(model, rows)
    # Each output element is the same dot product, computed in another BLAS call.
    assert mx.allclose(split, stock, atol=1e-4, rtol=1e-4).item()
    assert mx.array_equal(split.argmax(-1), stock.argmax(-1)).item()
    layers.set_split(False)
    assert blas.calls == [1, 2]  # OpenBLAS's own count back
    assert all(type(m) is stock_types[id(m)] for m, _, _ in layers.layers)
    layers.set_split(False)
    assert blas.calls == [1, 2]  # a no-op when already so


def test_small_sharded_and_quantized_layers_are_left_whole():
    model = tiny_fp32()
    nn.quantize(model, group_size=64, bits=4, class_predicate=lambda path, m: "mlp" in path)
    kept = cpu_split.splittable(model)
    assert kept and all(type(m) in (nn.Linear, nn.Embedding) for m in kept)
    assert not any(isinstance(m, nn.QuantizedLinear) for m in kept)
    assert all(m.weight.shape[0] >= cpu_split.SPLIT_MIN_ROWS for m in kept)


def test_choose_follows_the_policy_and_the_measurement(monkeypatch):
    model = tiny_fp32()
    monkeypatch.setattr(cpu_split, "openblas", lambda: FakeBlas())
    assert cpu_split.choose("off", model, on="cpu", max_batch=8)[0] is None
    assert cpu_split.choose("auto", model, on="cuda", max_batch=8)[0] is None
    assert cpu_split.choose("on", model, on="cpu", max_batch=1)[0] is None
    forced, why = cpu_split.choose("on", model, on="cpu", max_batch=8)
    assert forced is not None and "--cpu-split on" in why
    for faster in (True, False):
        monkeypatch.setattr(cpu_split, "split_is_faster", lambda layers, faster=faster: (faster, "measured"))
        chosen, why = cpu_split.choose("auto", model, on="cpu", max_batch=8)
        assert (chosen is not None) is faster and why == f"auto: {'on' if faster else 'off'} (measured)"
    monkeypatch.setattr(cpu_split, "openblas", lambda: None)
    assert cpu_split.choose("on", model, on="cpu", max_batch=8) == (None, "no OpenBLAS in this process")
    with pytest.raises(ValueError, match="cpu-split"):
        cpu_split.choose("sometimes", model, on="cpu", max_batch=8)


def test_the_measurement_leaves_the_stock_layers_in_place():
    model = tiny_fp32()
    blas = FakeBlas()
    layers = cpu_split.split_layers(model, blas, 2)  # type: ignore[arg-type]
    faster, measured = cpu_split.split_is_faster(layers, repeats=2)
    assert isinstance(faster, bool) and "8 rows through 256x128" in measured
    assert not layers.split and blas.calls == [1, 2]


def test_real_openblas_thread_count_changes_and_comes_back():
    blas = cpu_split.openblas()
    if blas is None:
        pytest.skip("this process runs no OpenBLAS (scripts/test.sh preloads it on Linux)")
    try:
        blas.set_threads(1)
        assert blas.get_threads() == 1
    finally:
        blas.set_threads(blas.threads)
    assert blas.get_threads() == blas.threads


def test_a_batch_splits_only_its_decode_steps_and_decodes_as_solo_runs_do(monkeypatch):
    """TextBatch asks for the split layers only for a batch's decode steps: a
    lone sequence and a step that prefills run the stock ones. Greedy tokens
    agree with each sequence run alone."""
    from mlxhost.core.types import SamplingParams
    from mlxhost.engine.batch import TextBatch
    from mlxhost.engine.sampling import make_sampler

    model = tiny_fp32()
    monkeypatch.setattr(cpu_split, "openblas", lambda: FakeBlas())
    choice = kernels.apply(model, weights="as-is", flat_qmm="auto", max_batch=8, cpu_split="on")
    assert choice.cpu_split and choice.split is not None and choice.as_dict()["cpu_split"] is True
    assert "split" not in choice.as_dict()
    params = SamplingParams(max_tokens=6, temperature=0.0)
    prompts = {1: (5, 17, 300, 2), 2: (9, 33, 2), 3: (40, 41, 42, 43, 44)}

    def run(keys, on_step=None):
        got: dict[int, list[int]] = {k: [] for k in keys}
        batch = TextBatch(
            model, eos=set(), max_batch=8, prefill_step=64, detokenizer=TokenNames,
            fetch_prefix=lambda tokens: (None, 0), store_prefix=lambda fed, cache: None,
            token_logprob=lambda *a: None, kernels=choice.for_step,
        )
        for k in keys:
            batch.join(prompts[k], params, make_sampler(params), [],
                       lambda step, error, k=k: got[k].append(step.token) if step else None)
        seen = []
        while batch.step():
            seen.append(choice.split.split)
        return got, seen

    alone = {k: run([k])[0][k] for k in prompts}
    together, seen = run(list(prompts))
    assert together == alone
    # Prefill and first tokens with the stock layers, then decode steps split.
    assert seen[0] is False and True in seen
    assert seen.index(True) == len(seen) - seen[::-1].index(False)  # no stock step after the first split
    _, seen_alone = run([1])
    assert True not in seen_alone
    choice.alone(True)
    assert not choice.split.split


def test_batches_past_eight_rows_and_prefill_steps_keep_the_stock_layers(monkeypatch):
    model = tiny_fp32()
    monkeypatch.setattr(cpu_split, "openblas", lambda: FakeBlas())
    choice = kernels.apply(model, weights="as-is", flat_qmm="auto", max_batch=16, cpu_split="on")
    assert choice.split is not None
    seen = []
    for step in ({"alone": False, "rows": 8}, {"alone": False, "rows": 9}, {"alone": False, "rows": 2},
                 {"alone": False, "rows": 2, "prefilling": True}, {"alone": True}):
        choice.for_step(**step)
        seen.append(choice.split.split)
    assert seen == [True, False, True, False, False]


def test_every_load_shares_the_process_streams():
    blas = FakeBlas()
    first = cpu_split.split_layers(tiny_fp32(), blas, 2)  # type: ignore[arg-type]
    second = cpu_split.split_layers(tiny_fp32(), blas, 2)  # type: ignore[arg-type]
    assert first.streams == second.streams and len(first.streams) == 2
