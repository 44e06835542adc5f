"""runtime.kernels: the 2-D quantized-matmul input and the bf16 weight policy,
on a tiny random quantized Qwen3 (real mlx-lm model code, CPU)."""

from __future__ import annotations

import pytest

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")

from mlxhost.engine import kernels
from mlxhost.testing.tiny_text import tiny_qwen3


def tiny_quantized(tie: bool = True):
    model = tiny_qwen3(tie)
    nn.quantize(model, group_size=64, bits=4)
    model.update(_to_bf16(model.parameters()))
    mx.eval(model.parameters())
    return model


def _to_bf16(tree):
    if isinstance(tree, dict):
        return {k: _to_bf16(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_to_bf16(v) for v in tree]
    if tree.dtype in (mx.float32, mx.float16):
        return tree.astype(mx.bfloat16)
    return tree


def logits(model, tokens):
    out = model(mx.array(tokens))
    mx.eval(out)
    return out


@pytest.mark.parametrize("pad_from", [None, 2])
@pytest.mark.parametrize("shape", [(8, 1), (12, 1), (1, 9), (3, 4), (2, 1), (5, 1), (7, 1), (1, 1)])
def test_flat_input_gives_identical_logits(shape, pad_from):
    model = tiny_quantized()
    tokens = (mx.arange(shape[0] * shape[1]).reshape(shape) * 37 % 512).tolist()
    before = logits(model, tokens)
    changed = kernels.flatten_quantized_inputs(model, pad_from=pad_from)
    assert len(changed) == len(kernels.quantized_modules(model)) > 0
    after = logits(model, tokens)
    assert after.shape == before.shape
    assert mx.array_equal(before, after).item()


def test_flat_input_reaches_the_2d_call(monkeypatch):
    """The flattened layers really hand quantized_matmul 2-D inputs from 8 rows up."""
    model = tiny_quantized()
    kernels.flatten_quantized_inputs(model)
    seen = []
    real = mx.quantized_matmul

    def spy(x, *args, **kwargs):
        seen.append(x.ndim)
        return real(x, *args, **kwargs)

    monkeypatch.setattr(mx, "quantized_matmul", spy)
    logits(model, [[1]] * 8)
    assert seen and set(seen) == {2}
    seen.clear()
    logits(model, [[1]] * 4)  # fewer rows than FLAT_MIN_ROWS keep their 3-D shape
    assert seen and set(seen) == {3}


def test_padded_rows_reach_the_8_row_call(monkeypatch):
    """With padding on, 2-7 decode rows go in as 8 rows of 2-D input; one row
    keeps its 3-D shape (the fast one for a single row)."""
    model = tiny_quantized()
    kernels.flatten_quantized_inputs(model, pad_from=kernels.PAD_FROM)
    seen = []
    real = mx.quantized_matmul

    def spy(x, *args, **kwargs):
        seen.append(x.shape[:-1])
        return real(x, *args, **kwargs)

    monkeypatch.setattr(mx, "quantized_matmul", spy)
    logits(model, [[1]] * 3)
    assert seen and set(seen) == {(8,)}
    seen.clear()
    logits(model, [[1]])
    assert seen and set(seen) == {(1, 1)}


def test_bf16_policy_dequantizes_every_layer():
    model = tiny_quantized()
    expected = {
        name: mx.dequantize(m.weight, m.scales, m.biases, m.group_size, m.bits)
        for name, m in kernels.quantized_modules(model)
    }
    tokens = [[5, 17, 300, 2]]
    quantized = logits(model, tokens)
    choice = kernels.apply(model, weights="bf16", flat_qmm="auto", max_batch=8)
    assert choice.weights == "bf16" and not choice.flat_qmm
    assert kernels.quantized_modules(model) == []
    modules = dict(model.named_modules())
    for name, weight in expected.items():
        assert isinstance(modules[name], (nn.Linear, nn.Embedding))
        assert modules[name].weight.dtype == mx.bfloat16
        assert mx.array_equal(modules[name].weight, weight).item()
    # The same weights; only the kernels' rounding differs.
    diff = mx.abs(logits(model, tokens).astype(mx.float32) - quantized.astype(mx.float32))
    assert mx.mean(diff).item() < 0.05


def test_auto_weights_rule():
    model = tiny_quantized()
    assert kernels.choose_weights("auto", model, max_batch=8, on="cpu")[0] == "as-is"
    assert kernels.choose_weights("auto", model, max_batch=8, on="metal")[0] == "as-is"
    assert kernels.choose_weights("auto", model, max_batch=4, on="cuda")[0] == "as-is"
    assert kernels.choose_weights("as-is", model, max_batch=8, on="cuda")[0] == "as-is"
    assert kernels.choose_weights("bf16", model, max_batch=1, on="cpu")[0] == "bf16"
    with pytest.raises(ValueError, match="weights policy"):
        kernels.choose_weights("fp8", model, max_batch=8)


def test_auto_weights_on_cuda_depends_on_memory(monkeypatch):
    model = tiny_quantized()
    need = kernels.bf16_bytes(model)
    monkeypatch.setattr(kernels, "device_memory", lambda: need * 4)
    assert kernels.choose_weights("auto", model, max_batch=8, on="cuda")[0] == "bf16"
    monkeypatch.setattr(kernels, "device_memory", lambda: need)
    chosen, why = kernels.choose_weights("auto", model, max_batch=8, on="cuda")
    assert chosen == "as-is" and "does not fit" in why


def test_unquantized_models_are_left_alone():
    from mlx_lm.models import qwen3

    args = qwen3.ModelArgs(
        model_type="qwen3", hidden_size=64, num_hidden_layers=1, intermediate_size=128,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, rms_norm_eps=1e-6,
        vocab_size=128, max_position_embeddings=128, rope_theta=10000.0, tie_word_embeddings=True,
    )
    model = qwen3.Model(args)
    choice = kernels.apply(model, weights="bf16", flat_qmm="on", max_batch=8)
    assert choice.weights == "as-is" and not choice.flat_qmm
    assert "not quantized" in choice.reason


def test_flat_qmm_auto_measures_on_the_model():
    model = tiny_quantized()
    faster, measured = kernels.flat_is_faster(model, repeats=2)
    assert isinstance(faster, bool) and "3-D" in measured and "2-D" in measured
    auto = kernels.apply(tiny_quantized(), weights="as-is", flat_qmm="auto", max_batch=8)
    assert not auto.pad_rows and "2-D qmm input" in auto.reason  # auto never pads small batches
    choice = kernels.apply(model, weights="as-is", flat_qmm="on", max_batch=8)
    assert choice.flat_qmm and choice.pad_rows and "--flat-qmm on" in choice.reason


def _batch_decode(model, prompts, steps=6):
    """Greedy tokens and last-step logprobs of a BatchGenerator run over ``prompts``."""
    from mlx_lm.generate import BatchGenerator

    generator = BatchGenerator(model, stop_tokens=[], completion_batch_size=8, prefill_batch_size=8)
    generator.insert(prompts, max_tokens=[steps] * len(prompts))
    tokens: dict[int, list[int]] = {}
    last = {}
    while len(last) < len(prompts):
        for response in generator.next_generated():
            tokens.setdefault(response.uid, []).append(response.token)
            if response.finish_reason is not None:
                last[response.uid] = response.logprobs
    generator.close()
    return [tokens[uid] for uid in sorted(tokens)], [last[uid] for uid in sorted(last)]


@pytest.mark.parametrize("lengths", [(5,), (6, 6), (4, 9, 7)])
def test_unpadded_decode_steps_drop_the_mask_and_keep_the_results(monkeypatch, lengths):
    """Same tokens and logprobs with the patch; a mask is built for a one-token
    step only while some sequence is left-padded."""
    from mlx_lm.models import base
    from mlx_lm.models.cache import BatchKVCache

    model = tiny_quantized()
    prompts = [[(7 * k + 3 * i) % 512 for k in range(n)] for i, n in enumerate(lengths)]
    monkeypatch.setattr(BatchKVCache, "make_mask", BatchKVCache.make_mask)  # undone after the test
    monkeypatch.setattr(BatchKVCache, "_mlxhost_unpadded_masks", False, raising=False)
    if "left_padding" in vars(BatchKVCache):
        monkeypatch.delattr(BatchKVCache, "left_padding")
    before_tokens, before_logprobs = _batch_decode(model, prompts)
    kernels.skip_unpadded_decode_masks()
    decode_masks = []
    real = base.create_causal_mask

    def spy(N, *args, **kwargs):
        if N == 1:
            decode_masks.append(kwargs.get("left_padding"))
        return real(N, *args, **kwargs)

    monkeypatch.setattr(base, "create_causal_mask", spy)
    monkeypatch.setattr("mlx_lm.models.cache.create_causal_mask", spy)
    after_tokens, after_logprobs = _batch_decode(model, prompts)
    assert after_tokens == before_tokens
    for a, b in zip(after_logprobs, before_logprobs):
        assert mx.allclose(a, b, atol=1e-5).item()
    if len(set(lengths)) == 1:
        assert decode_masks == []  # nothing padded: no mask at any decode step
    else:
        assert decode_masks and all(mx.any(p > 0).item() for p in decode_masks)


def test_flat_layers_switch_back_to_the_stock_classes_and_agree():
    model = tiny_quantized()
    tokens = [[5, 17, 300, 2]] * 8
    stock_types = {name: type(m) for name, m in kernels.quantized_modules(model)}
    layers = kernels.flatten_quantized_inputs(model, pad_from=kernels.PAD_FROM)
    flat = logits(model, tokens)
    layers.set_flat(False)
    assert {name: type(m) for name, m in kernels.quantized_modules(model)} == stock_types
    assert mx.array_equal(logits(model, tokens), flat).item()
    layers.set_flat(True)
    assert all(type(m) is not stock_types[name] for name, m in kernels.quantized_modules(model))


def test_kernel_choice_reports_without_its_layers():
    model = tiny_quantized()
    choice = kernels.apply(model, weights="as-is", flat_qmm="on", max_batch=8)
    assert choice.layers is not None and len(choice.layers) == len(kernels.quantized_modules(model))
    assert "layers" not in choice.as_dict() and choice.as_dict()["flat_qmm"] is True


class _Detokenizer:
    def __init__(self):
        self.tokens = []
        self.last_segment = ""

    def reset(self):
        self.tokens = []

    def add_token(self, token):
        self.tokens.append(token)
        self.last_segment = f"<{token}>"

    def finalize(self):
        self.last_segment = ""


def test_a_lone_sequence_decodes_with_the_stock_classes_and_a_batch_with_the_flat_ones():
    """TextBatch tells the kernels when one sequence runs alone (mlx-lm's
    single-sequence loop: one row, where the flat wrapper only costs Python time)."""
    from mlxhost.core.types import SamplingParams
    from mlxhost.engine.batch import TextBatch
    from mlxhost.engine.sampling import make_sampler

    model = tiny_quantized()
    choice = kernels.apply(model, weights="as-is", flat_qmm="on", max_batch=8)
    _, layer = kernels.quantized_modules(model)[0]
    stock = type(layer).__mro__[1]
    batch = TextBatch(
        model, eos=set(), max_batch=8, prefill_step=64, detokenizer=_Detokenizer,
        fetch_prefix=lambda tokens: (None, 0), store_prefix=lambda fed, cache: None,
        token_logprob=lambda *a: None, kernels=choice.for_step,
    )
    got: dict[int, list[int]] = {1: [], 2: []}
    params = SamplingParams(max_tokens=6, temperature=0.0)

    def emit_to(key):
        return lambda step, error: got[key].append(step.token) if step is not None else None

    batch.join((5, 17, 300, 2), params, make_sampler(params), [], emit_to(1))
    for _ in range(3):
        batch.step()
        assert type(layer) is stock  # alone: the stock class
    batch.join((9, 33, 2), params, make_sampler(params), [], emit_to(2))
    batch.step()
    assert type(layer) is not stock and isinstance(layer, stock)  # a batch: the flat one
    while batch.step():
        pass
    assert len(got[1]) == 6 and len(got[2]) == 6
    # The lone one moved into the batch with the newcomer: one prompt group.
    assert (batch.alone, batch.moved, batch.groups) == (1, 1, 1)
