"""Shared layers: one attention for every family, window ops, position tables, fused linear."""

import copy
import importlib
import itertools

import pytest
import timm.layers
import torch
import torch.nn.functional as F

import visionzoo
import visionzoo.testing
from visionzoo.layers import (
    Attention,
    Conv2d,
    DropPath,
    Mlp,
    add_projection,
    attention,
    linear,
    linear_act,
    linear_add,
    relative_position_index,
    resample_abs_pos_embed,
    resize_rel_pos_bias_table,
    shift_window_mask,
    skippable,
    window_partition,
    window_reverse,
)
from visionzoo.layers import conv as conv_module
from visionzoo.layers.conv import StdConv2d
from visionzoo.layers.helpers import pad_same
from visionzoo.layers.linear import _default_on, _kernel_works, onednn_linear_available, use_onednn_linear
from visionzoo.layers.mlp import MAX_BLOCKED_HIDDEN, MIN_BLOCKED_ROWS, ROW_BLOCK


@pytest.mark.parametrize("bias_kind", ["none", "per_head", "batched", "masked"])
def test_fused_and_plain_attention_agree(bias_kind):
    torch.manual_seed(0)
    B, nH, N, hd = 3, 4, 49, 16
    q, k, v = (torch.randn(B, nH, N, hd) for _ in range(3))
    bias = None
    if bias_kind == "per_head":  # a relative-position bias: (nH, N, N), broadcast over the batch
        bias = torch.randn(nH, N, N)
    elif bias_kind == "batched":
        bias = torch.randn(B, nH, N, N)
    elif bias_kind == "masked":  # Swin's shift mask: -100 between regions, plus a bias
        bias = torch.randn(nH, N, N) + shift_window_mask(14, 14, (7, 7), (3, 3))[3][None]
    fused = attention(q, k, v, bias, fused=True)
    plain = attention(q, k, v, bias, fused=False)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    # and the plain path is the textbook formula
    logits = q @ k.transpose(-2, -1) / hd**0.5 + (0 if bias is None else bias)
    torch.testing.assert_close(plain, logits.softmax(-1) @ v, rtol=1e-5, atol=1e-5)


def test_attention_module_paths_agree_and_map_sums_to_one():
    torch.manual_seed(0)
    attn = Attention(64, 8).eval()
    x = torch.randn(2, 10, 64)
    bias = torch.randn(8, 10, 10)
    y_fused = attn(x, bias)
    attn.fused = False
    torch.testing.assert_close(attn(x, bias), y_fused, rtol=1e-5, atol=1e-5)
    amap = attn.attention_map(x, bias)
    assert amap.shape == (2, 8, 10, 10)
    torch.testing.assert_close(amap.sum(-1), torch.ones(2, 8, 10))


def test_window_partition_round_trip():
    x = torch.randn(2, 14, 21, 5)
    w = window_partition(x, (7, 7))
    assert w.shape == (2 * 2 * 3, 49, 5)
    torch.testing.assert_close(w[1].view(7, 7, 5), x[0, :7, 7:14])  # second window of the first row
    torch.testing.assert_close(window_reverse(w, (7, 7), 14, 21), x)


def test_relative_position_index_brute_force():
    Mh, Mw = 3, 4
    idx = relative_position_index((Mh, Mw))
    coords = [(i, j) for i in range(Mh) for j in range(Mw)]
    for a, (i1, j1) in enumerate(coords):
        for b, (i2, j2) in enumerate(coords):
            assert idx[a, b] == (i1 - i2 + Mh - 1) * (2 * Mw - 1) + (j1 - j2 + Mw - 1)


def test_resample_abs_pos_embed_matches_timm():
    pe = torch.randn(1, 1 + 14 * 14, 32)
    ours = resample_abs_pos_embed(pe, (24, 20), num_prefix_tokens=1)
    ref = timm.layers.resample_abs_pos_embed(pe, new_size=(24, 20), num_prefix_tokens=1)
    torch.testing.assert_close(ours, ref)
    assert resample_abs_pos_embed(pe, (14, 14), num_prefix_tokens=1) is pe


def test_resize_rel_pos_bias_table_keeps_values_at_same_size_and_shapes_otherwise():
    t = torch.randn(13 * 13, 4)
    assert resize_rel_pos_bias_table(t, (7, 7)) is t
    assert resize_rel_pos_bias_table(t, (12, 12)).shape == (23 * 23, 4)
    const = torch.ones(13 * 13, 2)
    torch.testing.assert_close(resize_rel_pos_bias_table(const, (12, 12)), torch.ones(23 * 23, 2))
    # a smaller window keeps the rows of its offsets: (2*4-1) x (2*7-1) of the 13 x 13 offsets
    grid = t.view(13, 13, 4)
    torch.testing.assert_close(resize_rel_pos_bias_table(t, (4, 7)), grid[3:10].reshape(-1, 4))
    # shrink along H, grow along W: the H rows are cut, then W is interpolated
    mixed = resize_rel_pos_bias_table(t, (4, 9))
    assert mixed.shape == (7 * 17, 4)
    torch.testing.assert_close(mixed.view(7, 17, 4)[:, 8], grid[3:10, 6])  # offset 0 along W lands on a source column


# --------------------------------------------------------------------------- fused linear
def _ops_run(fn):
    """Names of the aten/mkldnn ops ``fn`` ran (the profiler is not a dispatch mode)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = fn()
    return out, {e.name for e in prof.events()}


needs_onednn = pytest.mark.skipif(not _kernel_works(), reason="torch build without oneDNN linear")


@pytest.fixture
def onednn_on():
    """The fused path on whatever this CPU's default (off by default without AVX-512)."""
    with use_onednn_linear(True):
        yield


@needs_onednn
@pytest.mark.usefixtures("onednn_on")
@pytest.mark.parametrize(
    "act", [None, torch.nn.GELU(), torch.nn.GELU(approximate="tanh"), torch.nn.ReLU(), torch.nn.SiLU(), torch.nn.Hardswish(), torch.nn.Sigmoid()]
)
@pytest.mark.parametrize("shape", [(7, 48), (2, 5, 48), (2, 3, 5, 48)])
def test_fused_linear_equals_linear_then_act(act, shape):
    torch.manual_seed(0)
    fc = torch.nn.Linear(48, 80)
    x = torch.randn(shape)
    want = fc(x) if act is None else act(fc(x))
    with torch.inference_mode():
        got, ops = _ops_run(lambda: linear(fc, x, act))
    assert "mkldnn::_linear_pointwise" in ops and "aten::addmm" not in ops
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-5)


@needs_onednn
@pytest.mark.usefixtures("onednn_on")
def test_large_fp32_weights_take_the_blas_path_where_set(monkeypatch):
    """The Intel rule (``INTEL_BLAS_FROM``): fp32 weights of that many elements and more run as
    ``F.linear`` (+ the activation in place; ``linear_add``: GEMM into the residual), the rest and
    bf16 ones through oneDNN; the results are the same."""
    lin = importlib.import_module("visionzoo.layers.linear")  # the module (the package's `linear` is its function)
    monkeypatch.setitem(lin._state, "blas_from", 48 * 80)
    torch.manual_seed(0)
    big, small, res = torch.nn.Linear(48, 80), torch.nn.Linear(48, 79), torch.randn(2, 5, 80)
    x = torch.randn(2, 5, 48)
    with torch.inference_mode():
        got, ops = _ops_run(lambda: linear(big, x, torch.nn.GELU()))
        assert "mkldnn::_linear_pointwise" not in ops
        torch.testing.assert_close(got, torch.nn.functional.gelu(big(x)), rtol=1e-5, atol=1e-5)
        got, ops = _ops_run(lambda: linear_add(res, x, big.weight, big.bias))
        assert "mkldnn::_linear_pointwise" not in ops and "aten::addmm_" in ops
        torch.testing.assert_close(got, res + big(x), rtol=1e-5, atol=1e-5)
        _, ops = _ops_run(lambda: linear(small, x))
        assert "mkldnn::_linear_pointwise" in ops
        if _kernel_works(torch.bfloat16):
            _, ops = _ops_run(lambda: linear(big.bfloat16(), x.bfloat16()))
            assert "mkldnn::_linear_pointwise" in ops


@needs_onednn
@pytest.mark.usefixtures("onednn_on")
def test_fused_linear_takes_strided_bf16_and_conv_weights():
    torch.manual_seed(0)
    fc = torch.nn.Linear(32, 16)
    x = torch.randn(2, 32, 9).transpose(1, 2)  # (2, 9, 32), not contiguous
    with torch.inference_mode():
        torch.testing.assert_close(linear(fc, x), torch.nn.functional.linear(x, fc.weight, fc.bias), rtol=1e-5, atol=1e-5)
        fc16, x16 = torch.nn.Linear(32, 16).bfloat16(), x.bfloat16()
        torch.testing.assert_close(linear(fc16, x16), fc16(x16), rtol=2e-2, atol=2e-2)
        w = torch.randn(16, 32, 1, 1)  # a 1x1 conv kernel read as a matrix
        torch.testing.assert_close(linear_act(x, w.flatten(1)), x @ w.flatten(1).T, rtol=1e-5, atol=1e-5)


@pytest.mark.usefixtures("onednn_on")
def test_fused_linear_stays_out_of_the_way():
    """Autograd, hooks, FLOP counting, compilation and switched-off runs see a plain nn.Linear."""
    torch.manual_seed(0)
    mlp = Mlp(16, 32)
    x = torch.randn(3, 16, requires_grad=True)
    out, ops = _ops_run(lambda: mlp(x))  # autograd on: differentiable ops only
    assert "mkldnn::_linear_pointwise" not in ops
    out.sum().backward()
    assert x.grad is not None and mlp.fc1.weight.grad is not None

    seen = []
    handle = mlp.fc1.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.inference_mode():
        _, ops = _ops_run(lambda: mlp(x.detach()))
    handle.remove()
    assert seen == [torch.Size([3, 32])]  # the hooked layer ran as itself
    assert "mkldnn::_linear_pointwise" in ops or not onednn_linear_available()  # fc2 still fused

    from torch.utils.flop_counter import FlopCounterMode

    counts = []
    for grad in (True, False):
        with torch.set_grad_enabled(grad), FlopCounterMode(display=False) as counter:
            mlp(x.detach())
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] == 2 * 2 * 3 * 16 * 32

    with torch.inference_mode(), use_onednn_linear(False):
        _, ops = _ops_run(lambda: mlp(x.detach()))
    assert "mkldnn::_linear_pointwise" not in ops


def test_qv_biased_linear_adds_query_and_value_biases_only():
    """The fused q / k / v projection of BEiT / EVA / Swin V2: the keys get no bias; a layer's
    own bias adds to it; a hooked layer runs as itself (its hook's change reaches the output);
    a layer without q / v biases is the layer."""
    from visionzoo.layers.linear import qv_biased_linear

    torch.manual_seed(0)
    fc = torch.nn.Linear(8, 24, bias=False)
    q_bias, v_bias, x = torch.randn(8), torch.randn(8), torch.randn(2, 5, 8)
    plain = F.linear(x, fc.weight)
    want = plain + torch.cat((q_bias, torch.zeros(8), v_bias))
    with torch.inference_mode():
        torch.testing.assert_close(qv_biased_linear(fc, x, q_bias, v_bias), want)
        torch.testing.assert_close(qv_biased_linear(fc, x, None, None), plain)
        handle = fc.register_forward_hook(lambda m, i, o: 2 * o)
        torch.testing.assert_close(qv_biased_linear(fc, x, q_bias, v_bias), want + plain)
        handle.remove()
        fc.bias = torch.nn.Parameter(torch.randn(24))
        torch.testing.assert_close(qv_biased_linear(fc, x, q_bias, v_bias), want + fc.bias)


ONEDNN_BOTH = [False, pytest.param(True, marks=needs_onednn)]


@pytest.mark.parametrize("act", [None, torch.nn.GELU(), torch.nn.ReLU(), torch.nn.SiLU(), torch.nn.Hardswish(), torch.nn.Sigmoid()])
def test_unfused_linear_applies_the_activation_in_place(act):
    torch.manual_seed(0)
    fc = torch.nn.Linear(24, 40)
    x = torch.randn(2, 5, 24)
    want = fc(x) if act is None else act(fc(x))
    with torch.inference_mode(), use_onednn_linear(False):
        got, ops = _ops_run(lambda: linear(fc, x, act))
    torch.testing.assert_close(got, want.detach(), rtol=1e-6, atol=1e-6)
    if type(act) in (torch.nn.GELU, torch.nn.ReLU):
        assert f"aten::{type(act).__name__.lower()}_" in ops


@pytest.mark.parametrize("onednn", ONEDNN_BOTH)
def test_linear_add_equals_residual_plus_linear(onednn):
    torch.manual_seed(0)
    fc = torch.nn.Linear(48, 32)
    x = torch.randn(2, 5, 48)
    residuals = [torch.randn(2, 5, 32), torch.randn(2, 32, 5).transpose(1, 2), torch.randn(1, 5, 32)]  # plain, strided, broadcast
    with use_onednn_linear(onednn):
        for residual in residuals:
            for bias in (fc.bias, None):
                want = (residual + F.linear(x, fc.weight, bias)).detach()
                keep = residual.clone()
                with torch.inference_mode():
                    got, ops = _ops_run(lambda: linear_add(residual, x, fc.weight, bias))
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
                assert torch.equal(residual, keep)  # the residual is read, never written
                if residual.shape == want.shape:
                    assert got.is_contiguous()
                    assert ("mkldnn::_linear_pointwise" if onednn else "aten::addmm_") in ops
        residual = residuals[0].clone().requires_grad_()
        linear_add(residual, x, fc.weight, fc.bias).sum().backward()  # autograd: the plain expression
        assert residual.grad is not None and fc.weight.grad is not None


@pytest.mark.parametrize("kind", ["mlp", "attention"])
def test_add_to_equals_the_block_expression(kind):
    """Mlp.add_to and Attention.add_to: ``residual + drop_path(module(x))``, with the last GEMM
    accumulating into the residual in inference; hooked, dropping or training: the plain expression."""
    torch.manual_seed(0)
    module = Mlp(16, 64) if kind == "mlp" else Attention(16, 4)
    hooked = module.fc2 if kind == "mlp" else module  # a hooked fc2 / attention runs as itself
    drop_path = DropPath(0.5)
    x, residual = torch.randn(2, 7, 16), torch.randn(2, 7, 16)
    keep = residual.clone()
    module.eval(), drop_path.eval()
    with torch.no_grad():
        want = residual + module(x)
        got, ops = _ops_run(lambda: module.add_to(residual, x, drop_path=drop_path))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert "aten::addmm_" in ops or onednn_linear_available()
        assert torch.equal(residual, keep)  # read, never written
        seen = []
        handle = hooked.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        torch.testing.assert_close(module.add_to(residual, x, drop_path=drop_path), want, rtol=1e-5, atol=1e-5)
        assert seen == [torch.Size([2, 7, 16])]
        handle.remove()
    module.train(), drop_path.train()  # dropout and stochastic depth: dropped or scaled per sample
    for drop in [m for m in module.modules() if isinstance(m, torch.nn.Dropout)]:
        drop.p = 0.3
    torch.manual_seed(1)
    out = module.add_to(residual, x, drop_path=drop_path)
    torch.manual_seed(1)
    torch.testing.assert_close(out, residual + drop_path(module(x)))


@pytest.mark.parametrize("onednn", ONEDNN_BOTH)
def test_mlp_add_to_runs_many_tokens_in_blocks(onednn, monkeypatch):
    """With a norm and many tokens, Mlp.add_to runs norm, fc1 + GELU and fc2 block by block in
    inference: the numbers of one pass, the residual untouched. A hooked norm runs once over all
    tokens; fewer tokens, a wider hidden layer or freed memory kept for reuse: one block."""
    mlp_module = importlib.import_module("visionzoo.layers.mlp")
    monkeypatch.setattr(mlp_module, "retains", lambda nbytes: False)  # blocks only where memory is not retained
    torch.manual_seed(0)
    mlp, norm = Mlp(16, 64).eval(), torch.nn.LayerNorm(16)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    tokens = (MIN_BLOCKED_ROWS + ROW_BLOCK // 2 + 4) // 2  # two images; the last block is partial
    x = torch.randn(2, tokens, 16)
    residual = torch.randn(2, 16, tokens).transpose(1, 2)  # strided

    def norms_run(module, x):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out = module.add_to(residual[:, : x.shape[1]], x, None, norm)
        torch.testing.assert_close(out, residual[:, : x.shape[1]] + module(norm(x)), rtol=1e-5, atol=1e-5)
        assert out.is_contiguous()
        return sum(e.name == "aten::layer_norm" for e in prof.events())

    keep = residual.clone()
    with use_onednn_linear(onednn), torch.no_grad():
        assert norms_run(mlp, x) == -(-2 * tokens // ROW_BLOCK)
        assert torch.equal(residual, keep)
        assert norms_run(mlp, x[:, : MIN_BLOCKED_ROWS // 2 - 1]) == 1
        assert norms_run(Mlp(16, MAX_BLOCKED_HIDDEN + 1).eval(), x) == 1
        with monkeypatch.context() as m:
            hidden = []
            m.setattr(mlp_module, "retains", lambda nbytes: hidden.append(nbytes) or True)
            assert norms_run(mlp, x) == 1 and hidden == [2 * tokens * 64 * 4]  # the whole hidden activation
        seen = []
        handle = norm.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        norms_run(mlp, x)
        handle.remove()
        assert seen == [x.shape] * 2  # every token at once: once in add_to, once in the reference
        handle = mlp.fc1.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        assert norms_run(mlp, x) == 1 and seen[-2:] == [(*x.shape[:2], 64)] * 2  # a hooked fc1: one block
        handle.remove()
        # off the CPU one pass (meta tensors stand in for a GPU's, where blocks were ~400 small launches per MLP)
        mlp_meta, norm_meta = copy.deepcopy(mlp).to("meta"), copy.deepcopy(norm).to("meta")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out = mlp_meta.add_to(residual.to("meta"), x.to("meta"), None, norm_meta)
        assert out.shape == residual.shape and sum(e.name == "aten::layer_norm" for e in prof.events()) == 1


def test_add_projection_skips_only_idle_modules():
    torch.manual_seed(0)
    proj, x, residual = torch.nn.Linear(8, 6), torch.randn(3, 8), torch.randn(3, 6)
    drop = torch.nn.Dropout(0.5)
    assert not skippable(drop) and skippable(drop.eval()) and skippable(torch.nn.Dropout(0.0).train())
    with torch.no_grad():
        torch.testing.assert_close(add_projection(residual, x, proj, drop, None), residual + proj(x), rtol=1e-5, atol=1e-5)
        drop.train()
        torch.manual_seed(2)
        out = add_projection(residual, x, proj, drop)
        torch.manual_seed(2)
        torch.testing.assert_close(out, residual + drop(proj(x)))
        assert not torch.allclose(out, residual + proj(x))  # the active dropout was applied


@needs_onednn
@pytest.mark.usefixtures("onednn_on")
def test_fused_linear_reorders_a_weight_once_it_is_reused():
    """From its second use on, an unchanged fp32 weight runs from a cached copy in oneDNN's
    blocked layout; an in-place update is seen, and a weight made afresh per call, or an
    inference tensor (whose changes cannot be tracked), is never copied."""
    from visionzoo.layers.linear import _BLOCKED, _reorder_works

    if not _reorder_works():
        pytest.skip("torch build cannot reorder linear weights")
    torch.manual_seed(0)
    fc = torch.nn.Linear(48, 80)
    x = torch.randn(2, 5, 48)
    blocked = lambda w: _BLOCKED._entries.get(w, (None, (None,)))[1][0]  # noqa: E731
    with torch.no_grad():
        for use in range(3):
            torch.testing.assert_close(linear(fc, x, torch.nn.GELU()), torch.nn.functional.gelu(x @ fc.weight.T + fc.bias), rtol=1e-5, atol=1e-5)
            assert (blocked(fc.weight) is not None) == (use > 0)
        assert blocked(fc.weight).is_mkldnn
        fc.weight.mul_(-0.5)  # an optimizer-style in-place step: the copy is stale
        torch.testing.assert_close(linear(fc, x), x @ fc.weight.T + fc.bias, rtol=1e-5, atol=1e-5)
        residual = torch.randn(2, 5, 80)
        torch.testing.assert_close(linear_add(residual, x, fc.weight, fc.bias), residual + x @ fc.weight.T + fc.bias, rtol=1e-5, atol=1e-5)
        before = sum(v[1][0] is not None for v in _BLOCKED._entries.values())
        for _ in range(3):
            w = fc.weight * 2  # a fresh tensor each call (a folded weight)
            torch.testing.assert_close(linear_act(x, w), x @ w.T, rtol=1e-5, atol=1e-5)
        assert sum(v[1][0] is not None for v in _BLOCKED._entries.values()) == before
    with torch.inference_mode():
        w = torch.randn(80, 48)
        for _ in range(2):
            torch.testing.assert_close(linear_act(x, w), x @ w.T, rtol=1e-5, atol=1e-5)
        assert w not in _BLOCKED



@needs_onednn
@pytest.mark.usefixtures("onednn_on")
def test_visionzoo_gelu_is_fused_as_a_post_op(monkeypatch):
    """visionzoo's in-place ``GELU`` (ConvMixer's) is exact GELU: both oneDNN kernels take it as
    their "gelu" post-op, as ``nn.GELU``, instead of running it after the product."""
    from visionzoo.layers.activations import GELU
    from visionzoo.layers.helpers import onednn_post_op

    assert onednn_post_op(GELU()) == onednn_post_op(torch.nn.GELU()) == ("gelu", [], "none")
    linear_module = importlib.import_module("visionzoo.layers.linear")  # (the package exports a function of that name)
    calls = []
    kernel = linear_module._KERNEL
    monkeypatch.setattr(linear_module, "_KERNEL", lambda *a: calls.append(a[3:]) or kernel(*a))
    torch.manual_seed(0)
    x, w, b = torch.randn(6, 32), torch.randn(16, 32), torch.randn(16)
    with torch.inference_mode():
        out = linear_act(x, w, b, GELU())
    torch.testing.assert_close(out, F.gelu(x @ w.T + b), rtol=1e-5, atol=1e-5)
    assert calls[-1] == ("gelu", [], "none")  # the product itself (earlier calls: once-per-process probes)

@needs_onednn
@pytest.mark.usefixtures("onednn_on")
@pytest.mark.parametrize("name, folded", [
    ("convnext_tiny", lambda m: m.stages[0].blocks[0]._fc2_folded()[0]),  # fc2 times the layer scale
    ("coatnet_0_224", lambda m: m.stages[1].blocks[0]._folded_expansion()[0]),  # 1x1 expansion with two BatchNorms folded
])
def test_folded_weights_reach_the_blocked_linear_cache(name, folded):
    """A weight folded once and kept (DerivedCache) is, from its second use, run from linear's
    blocked copy: computed inside inference_mode it used to be an inference tensor, which that
    cache cannot track, so it was reordered on every call (ConvNeXt-T 6 % slower)."""
    from visionzoo.layers.linear import _BLOCKED, _reorder_works

    if not _reorder_works():
        pytest.skip("torch build cannot reorder linear weights")
    small = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128)) if name == "convnext_tiny" else {}
    m = visionzoo.create_model(name, num_classes=10, **small).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        ref = m(x)
        torch.testing.assert_close(m(x), ref)  # the second call runs from the blocked copy
        w = folded(m)
        assert not w.is_inference() and not w.requires_grad
        assert _BLOCKED._entries.get(w, (None, (None,)))[1][0] is not None
    with torch.no_grad(), use_onednn_linear(False):
        torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name, kwargs", [
    ("coatnet_0_224", dict(img_size=64)),  # MBConv's expansion with two BatchNorms folded in
    ("convmixer_256_8", {}),  # the mixer block's BatchNorm affines
    ("resnet18", {}),  # convolutions with their BatchNorms folded
])
@pytest.mark.parametrize("recalibrate_in", ["no_grad", "inference_mode"])
def test_folded_batchnorms_follow_statistics_a_training_forward_updates(name, kwargs, recalibrate_in):
    """BatchNorm re-calibration (the norms alone in training mode, a forward, back to eval):
    the running statistics change in place without moving their version counters. CoAtNet's
    folded expansion and ConvMixer's affines kept the old statistics (4e-2 and 1e-1 from the
    plain path): the caches see the batch count, which the training forward adds to."""
    torch.manual_seed(0)
    m = visionzoo.create_model(name, num_classes=10, **kwargs).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        m(x)  # the folded tensors cached
    norms = [b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    for b in norms:
        b.train()
    with torch.inference_mode() if recalibrate_in == "inference_mode" else torch.no_grad():
        m(torch.randn(4, 3, 64, 64) * 2 + 1)
    for b in norms:
        b.eval()
    with torch.inference_mode():
        fast = m(x)
    with torch.enable_grad():
        plain = m(x).detach()
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)


def test_derived_cache_sees_a_dtype_round_trip_that_reuses_the_weight_address():
    """``.bfloat16().float()`` gives a weight a new storage with an unchanged version counter,
    and glibc often hands the new data the freed data's address (about half of these trials):
    the cached value must still be recomputed from the rounded weight."""
    from visionzoo.layers.helpers import DerivedCache

    cache = DerivedCache()
    calls = []
    for trial in range(20):
        fc = torch.nn.Linear(384, 1536)  # 2.4 MB: glibc maps it, and munmap + mmap often reuse the address
        compute = lambda fc=fc: calls.append(1) or (fc.weight * 1,)  # noqa: E731
        before = cache.get(fc, [fc.weight], compute)[0]
        assert cache.get(fc, [fc.weight], compute)[0] is before  # unchanged: served from the cache
        fc.bfloat16().float()
        after = cache.get(fc, [fc.weight], compute)[0]
        assert len(calls) == 2 * (trial + 1), f"trial {trial}: a stale value was served after .bfloat16().float()"
        torch.testing.assert_close(after, fc.weight, rtol=0, atol=0)


@needs_onednn
@pytest.mark.usefixtures("onednn_on")
def test_fused_linear_after_a_dtype_round_trip_uses_the_new_weight():
    torch.manual_seed(0)
    x = torch.randn(64, 384)
    for _ in range(10):
        fc = torch.nn.Linear(384, 1536)
        with torch.no_grad():
            fc.weight.normal_()
        with torch.inference_mode():
            linear(fc, x), linear(fc, x)  # the second use caches the reordered weight
        fc.bfloat16().float()  # the values are rounded to bf16
        with torch.inference_mode():
            torch.testing.assert_close(linear(fc, x), x @ fc.weight.T + fc.bias, rtol=1e-5, atol=1e-4)


def test_fused_linear_default_follows_environment_then_cpu(monkeypatch):
    monkeypatch.setenv("VISIONZOO_ONEDNN_LINEAR", "0")
    assert not _default_on()
    monkeypatch.setenv("VISIONZOO_ONEDNN_LINEAR", "1")
    assert _default_on()
    monkeypatch.delenv("VISIONZOO_ONEDNN_LINEAR")
    assert _default_on() == torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def test_environment_switches_read_on_and_off_words_and_warn_of_others(monkeypatch):
    """VISIONZOO_FOLD_BN / PACK_CONV / ONEDNN_LINEAR: "false" or "off" turned them on (only "0"
    read as off), the oneDNN linear even where it is off by default; now on / off words in any
    case, and another value leaves the default with a warning naming it."""
    from visionzoo.layers.helpers import env_switch

    for word, value in (("0", False), ("Off", False), ("false", False), ("no", False), ("1", True), ("ON", True), ("true", True), (" yes ", True)):
        monkeypatch.setenv("VISIONZOO_FOLD_BN", word)
        assert env_switch("VISIONZOO_FOLD_BN", not value) is value
    monkeypatch.setenv("VISIONZOO_FOLD_BN", "")
    assert env_switch("VISIONZOO_FOLD_BN", False) is False
    monkeypatch.setenv("VISIONZOO_ONEDNN_LINEAR", "disabled")
    with pytest.warns(UserWarning, match=r"VISIONZOO_ONEDNN_LINEAR='disabled' is not 1 or 0 \(on or off\): left off"):
        assert env_switch("VISIONZOO_ONEDNN_LINEAR", False) is False


@needs_onednn
@pytest.mark.usefixtures("onednn_on")
@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "coatnet_0_224"])
def test_models_agree_with_and_without_fused_linear(name):
    import visionzoo
    import visionzoo.testing

    overrides = {"depths": (2, 2, 2, 2)} if name.startswith("swin") else {}  # shifted blocks too
    model = visionzoo.testing.build_random(lambda: visionzoo.create_model(name, num_classes=7, **overrides)).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        with use_onednn_linear(False):
            ref, ops = _ops_run(lambda: model(x))
        assert "mkldnn::_linear_pointwise" not in ops
        out, ops = _ops_run(lambda: model(x))
        again = model(x)  # the linear weights in oneDNN's blocked layout from the second call on
    assert "mkldnn::_linear_pointwise" in ops
    assert visionzoo.testing.max_rel_diff(out, ref) < 1e-5
    assert visionzoo.testing.max_rel_diff(again, ref) < 1e-5


# --------------------------------------------------------------------------- separable max pooling
def _aten_ops(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.fixture
def pool_small_maps(monkeypatch):
    """The separable max pool also on the small maps these tests use (see pooling.MIN_ELEMENTS)."""
    from visionzoo.layers import pooling

    monkeypatch.setattr(pooling, "MIN_ELEMENTS", 0)


@pytest.mark.parametrize("hw", [(7, 9), (8, 8), (13, 6), (56, 57), (3, 4)])
def test_max_pool2d_equals_torch_for_every_window(hw, pool_small_maps):
    from visionzoo.layers import max_pool2d

    H, W = hw
    x = torch.randn(2, 3, H, W)
    checked = 0
    for k, s, p, ceil in itertools.product([1, 2, 3, 5], [1, 2, 3], [0, 1, 2], [False, True]):
        if p > k // 2 or k > min(H, W) + 2 * p:
            continue
        with torch.no_grad():
            ref = F.max_pool2d(x, k, s, p, ceil_mode=ceil)
            out = max_pool2d(x, k, s, p, ceil)
        assert out.shape == ref.shape and torch.equal(out, ref), (k, s, p, ceil)
        checked += 1
    assert checked > 30


def test_max_pool2d_fast_path_is_taken_only_in_inference(pool_small_maps):
    from visionzoo.layers import MaxPool2d

    pool = MaxPool2d(3, 2, 1)
    x = torch.randn(2, 4, 16, 16)
    with torch.inference_mode():
        assert "aten::max_pool2d_with_indices" not in _aten_ops(lambda: pool(x))
        assert "aten::max_pool2d_with_indices" in _aten_ops(lambda: pool(x.to(memory_format=torch.channels_last)))
    xg = x.clone().requires_grad_()
    assert "aten::max_pool2d_with_indices" in _aten_ops(lambda: pool(xg))  # autograd: PyTorch's kernel and gradient
    pool(xg).sum().backward()
    ref = x.clone().requires_grad_()
    F.max_pool2d(ref, 3, 2, 1).sum().backward()
    assert torch.equal(xg.grad, ref.grad)


def test_max_pool2d_nan_inf_bf16_and_fallbacks(pool_small_maps):
    from visionzoo.layers import MaxPool2d, max_pool2d

    x = torch.randn(1, 2, 9, 9)
    x[0, 0, 4, 4] = float("nan")
    x[0, 1] = float("-inf")
    with torch.no_grad():
        ref, out = F.max_pool2d(x, 3, 2, 1), max_pool2d(x, 3, 2, 1)
        assert torch.equal(out.isnan(), ref.isnan()) and out.isnan().any()
        assert torch.equal(out.nan_to_num(0.0), ref.nan_to_num(0.0))
        xb = torch.randn(2, 3, 11, 10).bfloat16()
        assert torch.equal(max_pool2d(xb, 3, 2, 0, True), F.max_pool2d(xb, 3, 2, 0, ceil_mode=True))
        dil = MaxPool2d(3, 1, 1, dilation=2)  # dilation and indices go to PyTorch's kernel
        assert torch.equal(dil(x).nan_to_num(0.0), F.max_pool2d(x, 3, 1, 1, dilation=2).nan_to_num(0.0))
        idx = MaxPool2d(2, return_indices=True)(x)
        assert isinstance(idx, tuple) and torch.equal(idx[1], F.max_pool2d(x, 2, return_indices=True)[1])
    with torch.inference_mode(), pytest.MonkeyPatch.context() as mp:  # tiny maps: PyTorch's kernel
        from visionzoo.layers import pooling

        mp.setattr(pooling, "MIN_ELEMENTS", 1 << 14)
        assert "aten::max_pool2d_with_indices" in _aten_ops(lambda: max_pool2d(torch.randn(1, 8, 4, 4), 2))
        assert "aten::max_pool2d_with_indices" not in _aten_ops(lambda: max_pool2d(torch.randn(1, 64, 16, 16), 3, 2, 1))
    with pytest.raises(RuntimeError):  # PyTorch's own error for a window larger than the map
        with torch.no_grad():
            max_pool2d(torch.randn(1, 1, 2, 2), 5)


@pytest.mark.parametrize("k,s,d", [(1, 1, 1), (1, 2, 1), (3, 1, 1), (3, 1, 2), (5, 1, 1), (3, 2, 1), (7, 2, 1), (2, 1, 1), (4, 1, 1)])
def test_std_conv_same_padding_equals_tensorflow_same(k, s, d):
    # stride-1 odd-reach and 1x1 kernels use the convolution's own padding; the rest pad per input size
    torch.manual_seed(0)
    conv = StdConv2d(5, 6, k, stride=s, dilation=d, same_pad=True, eps=1e-6)
    ref = StdConv2d(5, 6, k, stride=s, dilation=d, eps=1e-6)
    ref.load_state_dict(conv.state_dict())
    for size in (9, 10, 13):
        x = torch.randn(2, 5, size, size + 1)
        want = ref(pad_same(x, (k, k), (s, s), (d, d)))
        got = conv(x)
        assert got.shape == want.shape == (2, 6, -(-size // s), -(-(size + 1) // s))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert conv.same_pad == (k > 1 and (s > 1 or (k - 1) * d % 2 == 1))


# --------------------------------------------------------------------------- BatchNorm folding
def _conv_bn_pair(conv: torch.nn.Conv2d, seed: int = 0):
    """``conv`` and a BN in eval mode with non-trivial statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    bn = torch.nn.BatchNorm2d(conv.out_channels, eps=1e-3).eval()
    with torch.no_grad():
        for t, lo, hi in ((bn.weight, 0.5, 1.5), (bn.bias, -0.5, 0.5), (bn.running_mean, -1.0, 1.0), (bn.running_var, 0.1, 3.0)):
            t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)
    return conv.eval(), bn


def _folded_ran(fn):
    """(output, whether ``fn`` ran a convolution without a batch norm after it)."""
    out, ops = _ops_run(fn)
    return out, "aten::native_batch_norm" not in ops and "aten::_native_batch_norm_legit_no_training" not in ops


_CONV_KWARGS = [
    dict(in_channels=8, out_channels=16, kernel_size=3, padding=1, bias=False),
    dict(in_channels=8, out_channels=16, kernel_size=1, stride=2, bias=True),
    dict(in_channels=8, out_channels=8, kernel_size=5, padding=2, groups=8, bias=False),  # depthwise
    dict(in_channels=8, out_channels=12, kernel_size=3, padding=2, dilation=2, groups=4, bias=True),
    dict(in_channels=8, out_channels=16, kernel_size=3, padding=1, padding_mode="reflect", bias=False),
    dict(in_channels=8, out_channels=16, kernel_size=(1, 7), padding=(0, 3), stride=(2, 1), bias=False),
]


@pytest.mark.parametrize("kwargs", _CONV_KWARGS)
def test_conv_bn_folding_equals_conv_then_bn(kwargs):
    from visionzoo.layers import apply_conv_bn

    torch.manual_seed(0)
    conv, bn = _conv_bn_pair(torch.nn.Conv2d(**kwargs))
    x = torch.randn(2, 8, 13, 11)
    with torch.no_grad():
        ref = bn(conv(x))
        out, folded = _folded_ran(lambda: apply_conv_bn(conv, bn, x))
    assert folded
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    with torch.inference_mode():  # inference mode too, and a channels-last input
        out = apply_conv_bn(conv, bn, x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    conv16, bn16 = conv.to(torch.bfloat16), bn.to(torch.bfloat16)
    with torch.no_grad():
        torch.testing.assert_close(apply_conv_bn(conv16, bn16, x.bfloat16()).float(), ref, rtol=3e-2, atol=3e-2)


def test_conv_bn_folding_follows_every_change_of_the_weights():
    from visionzoo.layers import apply_conv_bn

    torch.manual_seed(0)
    conv, bn = _conv_bn_pair(torch.nn.Conv2d(4, 6, 3, padding=1, bias=False))
    x = torch.randn(1, 4, 9, 9)

    def check():
        with torch.no_grad():
            out, folded = _folded_ran(lambda: apply_conv_bn(conv, bn, x))
            torch.testing.assert_close(out, bn(conv(x)), rtol=1e-5, atol=1e-5)
        assert folded

    check()
    with torch.no_grad():
        bn.running_var.mul_(4.0)  # in place: the version counter moves
    check()
    conv.weight.data = torch.randn_like(conv.weight)  # a new tensor behind the parameter
    check()
    state = {k: v + 0.25 if v.is_floating_point() else v for k, v in bn.state_dict().items()}
    bn.load_state_dict(state)
    check()
    bn.eps = 0.5
    check()
    opt = torch.optim.SGD(conv.parameters(), lr=0.1)  # a training step between two inference calls
    bn(conv(x)).square().sum().backward()
    opt.step()
    check()
    conv.double(), bn.double()
    x = x.double()
    check()


def test_conv_bn_folding_stays_out_of_the_way():
    """Autograd, training mode, hooks, other norms and conv subclasses see the plain modules;
    a call off the folded path drops the cached copy."""
    from visionzoo.layers import apply_conv_bn, apply_conv_bn_seq
    from visionzoo.layers.conv import use_bn_folding

    torch.manual_seed(0)
    conv, bn = _conv_bn_pair(torch.nn.Conv2d(4, 6, 3, padding=1, bias=False))
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        ref = bn(conv(x))
        apply_conv_bn(conv, bn, x)
    assert conv in conv_module._FOLDED

    out, folded = _folded_ran(lambda: apply_conv_bn(conv, bn, x.requires_grad_()))  # autograd on
    assert not folded and conv not in conv_module._FOLDED
    out.sum().backward()
    assert conv.weight.grad is not None and bn.weight.grad is not None
    x = x.detach()

    bn.train()
    with torch.no_grad():
        _, folded = _folded_ran(lambda: apply_conv_bn(conv, bn, x))
    assert not folded  # batch statistics (which also moved the running ones)
    bn.eval()
    with torch.no_grad():
        ref = bn(conv(x))

    seen = []
    handle = bn.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        _, folded = _folded_ran(lambda: apply_conv_bn(conv, bn, x))
        assert not folded and seen == [torch.Size([2, 6, 8, 8])]
        seq = torch.nn.Sequential(conv, bn)
        handle.remove()
        seq.register_forward_hook(lambda m, i, o: seen.append("seq"))
        torch.testing.assert_close(apply_conv_bn_seq(seq, x), ref)
        assert seen[-1] == "seq"

        std = StdConv2d(4, 6, 3, padding=1, bias=False)  # overrides forward: not folded
        _, folded = _folded_ran(lambda: apply_conv_bn(std, bn, x))
        assert not folded
        normed = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv2d(4, 6, 3, padding=1))  # parametrised
        out, folded = _folded_ran(lambda: apply_conv_bn(normed, bn, x))
        assert not folded
        torch.testing.assert_close(out, bn(normed(x)))
        with use_bn_folding(False):
            out, folded = _folded_ran(lambda: apply_conv_bn(conv, bn, x))
        assert not folded
        torch.testing.assert_close(out, ref)
        frozen = torch.nn.Sequential()  # any other norm module is called as itself
        torch.testing.assert_close(apply_conv_bn(conv, frozen, x), conv(x))

        class Pair(torch.nn.Module):  # FX symbolic tracing records the two modules
            def __init__(self):
                super().__init__()
                self.conv, self.bn = conv, bn

            def forward(self, t):
                return apply_conv_bn(self.conv, self.bn, t)

        traced = torch.fx.symbolic_trace(Pair())
        assert [n.target for n in traced.graph.nodes if n.op == "call_module"] == ["conv", "bn"]
        torch.testing.assert_close(traced(x), ref)

    with torch.inference_mode():  # parameters made under inference mode have no version counter
        conv_i, bn_i = _conv_bn_pair(torch.nn.Conv2d(4, 6, 3, padding=1, bias=False))
        out, folded = _folded_ran(lambda: apply_conv_bn(conv_i, bn_i, x))
        torch.testing.assert_close(out, bn_i(conv_i(x)))
    assert not folded


@pytest.mark.parametrize("name", ["resnet18", "seresnet50", "efficientnet_b0", "mobilenetv2_100", "densenet121", "regnety_040", "inception_v3", "hrnet_w18"])
def test_models_agree_with_and_without_bn_folding(name):
    import visionzoo
    import visionzoo.testing
    from visionzoo.layers.conv import use_bn_folding

    model = visionzoo.testing.build_random(lambda: visionzoo.create_model(name, num_classes=7)).eval()
    x = torch.randn(1, 3, 96, 96)

    def run():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out = model(x)
        return out, sum(e.name == "aten::batch_norm" for e in prof.events())

    with torch.inference_mode():
        with use_bn_folding(False):
            ref, n_ref = run()
        out, n = run()
    assert n < n_ref  # BNs were folded away
    assert visionzoo.testing.max_rel_diff(out, ref) < 1e-4  # logits that carry the input: 2.4e-5 for RegNetY-4GF


def _packed_ran(fn):
    """(output, number of oneDNN calls on a prepacked weight ``fn`` made)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = fn()
    return out, sum(e.name.startswith("mkldnn::_convolution_pointwise") for e in prof.events())


needs_packed_conv = pytest.mark.skipif(not conv_module._HAVE_PACKED_CONV, reason="torch build without oneDNN convolution ops")
_CL = torch.channels_last
_ACTS = [
    None,
    torch.nn.Identity(),
    torch.nn.ReLU(inplace=True),
    torch.nn.ReLU6(),
    torch.nn.Hardtanh(-0.5, 0.75),
    torch.nn.LeakyReLU(0.1),
    torch.nn.SiLU(inplace=True),
    torch.nn.Hardswish(),
    torch.nn.GELU(),
    torch.nn.GELU(approximate="tanh"),
    torch.nn.Sigmoid(),
    torch.nn.Hardsigmoid(),
    torch.nn.Tanh(),
    torch.nn.ELU(),  # no oneDNN post-op: the activation runs after the convolution
]


@needs_packed_conv
@pytest.mark.parametrize("kwargs", [k for k in _CONV_KWARGS if "padding_mode" not in k])  # (reflect padding: test below)
@pytest.mark.parametrize("norm", ["bn", "none"])
def test_packed_conv_with_activation_and_sum_equals_the_expression(kwargs, norm):
    """On a channels-last map, ``act(bn(conv(x)) + residual)`` makes one oneDNN call on a packed
    weight (with the activation and sum as its post-ops where oneDNN has them) and equals the
    modules run one by one."""
    from visionzoo.layers import apply_conv_bn

    torch.manual_seed(0)
    conv, bn = _conv_bn_pair(torch.nn.Conv2d(**kwargs))
    bn = bn if norm == "bn" else None
    x = torch.randn(3, 8, 13, 11).to(memory_format=_CL)
    with torch.inference_mode():
        y = conv(x.contiguous())
        y = bn(y) if bn is not None else y
        residual = torch.randn(y.shape).to(memory_format=_CL)
        for act in _ACTS:
            for r in (None, residual):
                z = y if r is None else y + r
                ref = z if act is None else act(z.clone())
                out, calls = _packed_ran(lambda: apply_conv_bn(conv, bn, x, act, residual=r))
                assert calls == 1, (act, r is None)
                assert out.is_contiguous(memory_format=_CL)
                torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5, msg=lambda m: f"{act}, residual {r is not None}: {m}")
        for act, r in ((_ACTS[2], residual), (_ACTS[6], None), (_ACTS[8], None)):  # post-ops: no separate pass
            _, ops = _ops_run(lambda: apply_conv_bn(conv, bn, x, act, residual=r))
            assert not ops & {"aten::relu_", "aten::relu", "aten::silu_", "aten::gelu", "aten::add_", "aten::add"}, ops
        for act in _ACTS:  # into_residual: the fused sum (alone or before a ReLU) is written into the residual
            ref = y + residual if act is None else act((y + residual).clone())
            r = residual.clone()
            out = apply_conv_bn(conv, bn, x, act, residual=r, into_residual=True)
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5, msg=lambda m: f"{act}, into the residual: {m}")
            fused = act is None or type(act) in (torch.nn.Identity, torch.nn.ReLU)
            assert (out.data_ptr() == r.data_ptr()) == fused, act  # the others sum into the convolution's fresh output
            if not fused:
                assert torch.equal(r, residual)


@needs_packed_conv
def test_packed_conv_follows_shapes_weights_and_the_switch():
    """The packed weight is repacked for a new input shape and after any change of the
    weights; ``set_conv_packing(False)`` drops every packed copy."""
    from visionzoo.layers import Conv2d, apply_conv_bn, set_conv_packing

    torch.manual_seed(0)
    conv = Conv2d(6, 10, 3, padding=1)
    folded, bn = _conv_bn_pair(torch.nn.Conv2d(6, 10, 3, stride=2, padding=1, bias=False))
    assert set(conv.state_dict()) == {"weight", "bias"}

    def check(*shape):
        x = torch.randn(*shape).to(memory_format=_CL)
        with torch.no_grad():
            out, calls = _packed_ran(lambda: conv(x))
            torch.testing.assert_close(out, F.conv2d(x.contiguous(), conv.weight, conv.bias, padding=1), rtol=1e-5, atol=1e-5)
            out2, calls2 = _packed_ran(lambda: apply_conv_bn(folded, bn, x))
            torch.testing.assert_close(out2, bn(folded(x.contiguous())), rtol=1e-5, atol=1e-5)
        assert calls == calls2 == 1

    check(2, 6, 16, 16)
    check(1, 6, 7, 9)  # packed for another shape: repacked
    check(5, 6, 33, 20)
    with torch.no_grad():
        conv.weight.mul_(-1.5)
        bn.running_mean.add_(0.3)
    check(5, 6, 33, 20)
    conv.bias.data = torch.randn(10)
    folded.weight.data = torch.randn_like(folded.weight)
    check(5, 6, 33, 20)
    assert conv in conv_module._PACKED and folded in conv_module._PACKED and folded in conv_module._FOLDED
    try:
        set_conv_packing(False)
        assert conv not in conv_module._PACKED and folded not in conv_module._PACKED
        x = torch.randn(2, 6, 8, 8).to(memory_format=_CL)
        with torch.no_grad():
            out, calls = _packed_ran(lambda: conv(x))
        assert calls == 0
        torch.testing.assert_close(out, F.conv2d(x, conv.weight, conv.bias, padding=1))
    finally:
        set_conv_packing(True)


@needs_packed_conv
def test_packed_conv_takes_1x1_maps_and_one_channel_inputs():
    """Layouts that are channels-last and contiguous at once run packed: a 1x1 map (ResNet's
    last stage at 32 px ran the NCHW kernel on a weight reordered on every call, 5x timm's
    time), and a one-channel model's input, which the model hands on with channels-last
    strides (its stem ran NCHW and so did every convolution after it)."""
    from visionzoo.layers import Conv2d, apply_conv_bn

    torch.manual_seed(0)
    conv, bn = Conv2d(8, 6, 3, padding=1), torch.nn.BatchNorm2d(6).eval()
    bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2)
    with torch.no_grad():
        for x in (torch.randn(2, 8, 1, 1), torch.randn(2, 8, 1, 1).to(memory_format=_CL)):
            r = torch.randn(2, 6, 1, 1)
            out, calls = _packed_ran(lambda: apply_conv_bn(conv, bn, x, torch.nn.ReLU(), residual=r))
            assert calls == 1
            torch.testing.assert_close(out, F.relu(bn(conv(x.contiguous())) + r), rtol=1e-5, atol=1e-5)

    def convs_packed(model, x):
        with torch.inference_mode():
            out, calls = _packed_ran(lambda: model(x))
        ref = model(x)  # autograd on: the plain modules
        assert visionzoo.testing.max_rel_diff(out, ref) < 1e-5
        return calls

    n_convs = 20  # ResNet-18: stem, 16 in the blocks, 3 projections
    model = visionzoo.create_model("resnet18", num_classes=5).eval()
    assert convs_packed(model, torch.randn(2, 3, 32, 32)) == n_convs  # last stage on 1x1 maps
    gray = visionzoo.create_model("resnet18", num_classes=5, in_chans=1).eval()
    assert convs_packed(gray, torch.randn(2, 1, 64, 64)) == n_convs


@needs_packed_conv
@pytest.mark.parametrize("name", ["resnet18", "regnetx_002", "googlenet", "inception_v4", "mobilenetv1_100", "efficientnet_b0", "vgg11", "convmixer_256_8", "hrnet_w18_small", "densenet121"])
def test_forward_features_and_intermediates_run_channels_last_as_forward(name):
    """Called directly on an NCHW image, ``forward_features`` and ``forward_intermediates`` of a
    channels-last family run the packed channels-last convolutions as ``forward`` does (they
    ran NCHW: ResNet-50's forward_features took ~14 % longer than its forward), and return
    plain NCHW tensors equal to the autograd path's."""
    model = visionzoo.create_model(name, num_classes=5).eval()
    x = torch.randn(2, 3, 96, 96) if name != "inception_v4" else torch.randn(1, 3, 139, 139)  # no 1x1 maps (those run packed in either layout)
    ref_features, (_, ref_maps) = model.forward_features(x), model.forward_intermediates(x)  # autograd on: plain modules
    with torch.inference_mode():
        features, calls = _packed_ran(lambda: model.forward_features(x))
        (features2, maps), calls2 = _packed_ran(lambda: model.forward_intermediates(x))
        maps_only = model.forward_intermediates(x, intermediates_only=True)
    assert calls > 0 and calls2 > 0
    for out, ref in [(features, ref_features), (features2, ref_features), *zip(maps, ref_maps), *zip(maps_only, ref_maps)]:
        assert out.is_contiguous() and visionzoo.testing.max_rel_diff(out, ref) < 1e-5


def test_to_contiguous_transposes_large_channels_last_maps_in_blocks():
    """``to_contiguous`` (what the channels-last families hand their maps back through) gives
    exactly ``contiguous()``: large maps go block by block, with a last partial block, in fp32
    and bf16; small, NCHW and autograd-recorded maps take ``contiguous()``."""
    from visionzoo.layers.helpers import to_contiguous

    torch.manual_seed(0)
    for shape, dtype in (((2, 64, 97, 89), torch.float32), ((1, 24, 300, 301), torch.bfloat16), ((3, 512, 29, 31), torch.float32), ((2, 3, 8, 8), torch.float32)):
        x = torch.randn(shape).to(dtype).contiguous(memory_format=_CL)
        out = to_contiguous(x)
        assert out.is_contiguous() and out.dtype == dtype and torch.equal(out, x)
    nchw = torch.randn(2, 64, 97, 89)
    assert to_contiguous(nchw) is nchw
    g = torch.randn(2, 64, 97, 89).contiguous(memory_format=_CL).requires_grad_()
    y = to_contiguous(g)
    y.sum().backward()
    assert y.is_contiguous() and torch.equal(g.grad, torch.ones_like(g))


def test_apply_bn_act_equals_the_modules():
    """``apply_bn_act`` (one addcmul with the cached affine in CPU inference) gives act(bn(x)) on
    channel slices of channels-last maps and on NCHW maps, sees changed statistics, and calls the
    modules for a training BN, autograd, hooks and activations it has no in-place form of."""
    from visionzoo.layers import apply_bn_act

    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(5).eval()
    bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2), bn.weight.data.normal_(), bn.bias.data.normal_()
    wide = torch.randn(2, 9, 6, 7).contiguous(memory_format=_CL)
    for x in (wide[:, :5], wide[:, 2:7], torch.randn(2, 5, 6, 7)):
        for act in (None, torch.nn.ReLU(), torch.nn.ReLU6(), torch.nn.SiLU(), torch.nn.GELU(), torch.nn.Tanh()):
            ref = bn(x) if act is None else act(bn(x))
            with torch.no_grad():
                out = apply_bn_act(bn, x, act)
            torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    x = wide[:, :5]
    with torch.no_grad():
        bn.running_var.mul_(3)  # a changed statistic is seen (the cached affine is recomputed)
        torch.testing.assert_close(apply_bn_act(bn, x, torch.nn.ReLU()), F.relu(bn(x)))
    seen = []
    h = bn.register_forward_hook(lambda m, i, o: seen.append(1))
    with torch.no_grad():
        apply_bn_act(bn, x)
    h.remove()
    assert seen == [1]
    bn.train()
    y = apply_bn_act(bn, x.clone().requires_grad_(), torch.nn.ReLU())  # batch statistics, with autograd
    torch.testing.assert_close(y, F.relu(F.batch_norm(x, None, None, bn.weight, bn.bias, True)))
    assert y.requires_grad


@needs_packed_conv
def test_std_conv_runs_packed_on_channels_last_maps():
    """In CPU inference a weight-standardised convolution on a channels-last map is one oneDNN
    call on its cached standardised kernel, prepacked (it ran ``F.conv2d``, which reorders the
    kernel on every call); an NCHW map keeps ``F.conv2d``, and a changed weight is seen."""
    from visionzoo.layers import StdConv2d

    torch.manual_seed(0)
    for kw in ({"kernel_size": 3, "stride": 2, "same_pad": True}, {"kernel_size": 1, "bias": True}, {"kernel_size": 3, "padding": 1, "groups": 2}):
        conv = StdConv2d(8, 6, eps=1e-8, **kw).eval()
        x = torch.randn(2, 8, 9, 11)
        for layout, packed in ((_CL, 1), (torch.contiguous_format, 0)):
            xl = x.contiguous(memory_format=layout)
            with torch.inference_mode():
                out, calls = _packed_ran(lambda: conv(xl))
            assert calls == packed, (kw, layout)
            torch.testing.assert_close(out, conv(x), rtol=1e-5, atol=1e-5)  # autograd on: computed afresh
        with torch.no_grad():
            conv.weight.mul_(-2).add_(0.1)
        with torch.inference_mode():
            out = conv(x.contiguous(memory_format=_CL))
        torch.testing.assert_close(out, conv(x), rtol=1e-5, atol=1e-5)


@needs_packed_conv
@pytest.mark.parametrize("name, in_chans, n_packed", [("vit_base_r50_s16_224", 3, 53), ("vit_base_r50_s16_224", 1, 53), ("coatnet_0_224", 3, 7)])
def test_hybrid_backbones_run_packed(name, in_chans, n_packed):
    """R50+ViT's ResNet runs channels-last in CPU inference (a one-channel input too), so its 52
    weight-standardised convolutions and the projection run packed; CoAtNet's stem and its MBConv
    depthwise convolutions (BatchNorm folded, GELU fused) do too. Outputs equal the autograd path's."""
    model = visionzoo.create_model(name, num_classes=5, img_size=64, in_chans=in_chans).eval()
    x = torch.randn(2, in_chans, 64, 64)
    with torch.inference_mode():
        out, calls = _packed_ran(lambda: model(x))
    assert calls == n_packed
    # 1e-4 as the timm equivalence tests: against a float64 run, R50+ViT's logits are 4.6e-5 off
    # channels-last (GroupNorm's NHWC kernel sums in another order) and 2.0e-5 off NCHW
    assert visionzoo.testing.max_rel_diff(out, model(x)) < 1e-4


@needs_packed_conv
@pytest.mark.parametrize("name, n_into", [("resnet18", 7), ("resnet50", 16)])
def test_resnet_stages_sum_into_tensors_only_they_hold(monkeypatch, name, n_into):
    """In CPU inference a ResNet block sums its residual into its shortcut (oneDNN's in-place
    sum) where nothing else holds that tensor: its projection's fresh output, or its input where
    the stage hands over the previous block's output. ResNet-18: every block but layer1's first
    (whose input is the stage's); ResNet-50: all 16 (each stage's first block projects). The
    model's input, a directly called block's input and what a hook saw are never written;
    logits and intermediates equal the autograd path's."""
    calls = []
    run = conv_module._run_packed

    def recording(*args, **kwargs):
        calls.append(kwargs.get("into_residual", args[6] if len(args) > 6 else False))
        return run(*args, **kwargs)

    monkeypatch.setattr(conv_module, "_run_packed", recording)
    torch.manual_seed(0)
    model = visionzoo.create_model(name, num_classes=5).eval()
    for m in model.modules():  # nonzero residual branches (the last BN of each starts at zero)
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.running_mean, -0.1, 0.1)
    x = torch.randn(2, 3, 64, 64)
    keep = x.clone()
    with torch.inference_mode():
        out = model(x)
        assert sum(calls) == n_into
        maps = model.forward_intermediates(x, intermediates_only=True)
    assert torch.equal(x, keep)
    want = model(x)  # autograd on: the plain modules
    assert visionzoo.testing.max_rel_diff(out, want) < 1e-4
    for got, ref in zip(maps, model.forward_intermediates(x, intermediates_only=True)):
        assert visionzoo.testing.max_rel_diff(got, ref) < 1e-4

    block = model.layer1[-1]  # called directly: its input is the caller's
    y = torch.randn(2, block.conv1.in_channels, 16, 16).to(memory_format=_CL)
    keep = y.clone()
    calls.clear()
    with torch.inference_mode():
        block(y)
    assert torch.equal(y, keep) and not any(calls)

    seen = []
    handle = model.layer2[0].register_forward_hook(lambda m, a, o: seen.append((o, o.clone())))
    calls.clear()
    with torch.inference_mode():
        hooked = model(x)
    handle.remove()
    assert torch.equal(seen[0][0], seen[0][1])  # what the hook kept was not written afterwards
    assert sum(calls) == n_into - (len(model.layer2) - 1)  # the hooked stage hands nothing over
    assert visionzoo.testing.max_rel_diff(hooked, want) < 1e-4


@needs_packed_conv
def test_packed_conv_stays_out_of_the_way():
    """NCHW (one channel too), bf16 and autograd inputs, reflect or TF 'SAME' padding, hooks
    and a residual oneDNN cannot take all run the plain modules, with the same result."""
    from visionzoo.layers import Conv2d, apply_conv_bn
    from visionzoo.models.efficientnet import Conv2dPad

    torch.manual_seed(0)
    conv = Conv2d(4, 6, 3, padding=1)
    relu = torch.nn.ReLU()
    with torch.no_grad():
        for x in (
            torch.randn(2, 4, 8, 8),  # NCHW
            torch.randn(2, 1, 8, 8),  # NCHW of one channel: is_contiguous(memory_format=channels_last) holds too
            torch.randn(2, 4, 8, 8, dtype=torch.bfloat16).to(memory_format=_CL),
        ):
            conv_x = (conv if x.shape[1] == 4 else Conv2d(1, 6, 3, padding=1)).to(x.dtype)
            out, calls = _packed_ran(lambda: conv_x(x))
            assert calls == 0
            torch.testing.assert_close(out, F.conv2d(x, conv_x.weight, conv_x.bias, padding=1))
        conv.float()
    x = torch.randn(2, 4, 8, 8).to(memory_format=_CL)
    out, calls = _packed_ran(lambda: conv(x))  # autograd on
    assert calls == 0 and out.requires_grad
    with torch.no_grad():
        ref = F.conv2d(x, conv.weight, conv.bias, padding=1)
        reflect = Conv2d(4, 6, 3, padding=1, padding_mode="reflect")
        assert _packed_ran(lambda: reflect(x))[1] == 0
        same = Conv2dPad(4, 6, 3, 2, tf_padding=True)
        out, calls = _packed_ran(lambda: apply_conv_bn(same, None, x))
        assert calls == 0
        torch.testing.assert_close(out, same(x.contiguous()))
        same.tf_padding = False  # symmetric padding: packed
        out, calls = _packed_ran(lambda: apply_conv_bn(same, None, x))
        assert calls == 1
        torch.testing.assert_close(out, same(x.contiguous()), rtol=1e-5, atol=1e-5)

        seen = []
        handle = conv.register_forward_hook(lambda m, i, o: seen.append("conv"))
        out, calls = _packed_ran(lambda: apply_conv_bn(conv, None, x, relu))
        assert calls == 0 and seen == ["conv"]
        torch.testing.assert_close(out, F.relu(ref))
        handle.remove()
        relu.register_forward_hook(lambda m, i, o: seen.append("act"))
        out, calls = _packed_ran(lambda: apply_conv_bn(conv, None, x, relu))
        assert calls == 1 and seen == ["conv", "act"]  # the convolution packed, the hooked act called
        torch.testing.assert_close(out, F.relu(ref), rtol=1e-5, atol=1e-5)
        for residual in (torch.randn(2, 6, 8, 8), torch.randn(1, 6, 1, 8).to(memory_format=_CL)):  # NCHW; broadcast
            out = apply_conv_bn(conv, torch.nn.Identity(), x, residual=residual)
            torch.testing.assert_close(out, ref + residual, rtol=1e-5, atol=1e-5)


def test_apply_conv_bn_seq_equals_the_sequential():
    """A Sequential of convolutions, norms, activations and other modules (nested too) gives
    its own output through ``apply_conv_bn_seq``, packed or not, hooked or not."""
    from visionzoo.layers import apply_conv_bn_seq

    torch.manual_seed(0)
    conv1, bn1 = _conv_bn_pair(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False))
    conv2, bn2 = _conv_bn_pair(torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False), seed=1)
    seq = torch.nn.Sequential(
        conv1, bn1, torch.nn.ReLU6(inplace=True), torch.nn.MaxPool2d(2),
        torch.nn.Sequential(torch.nn.Conv2d(8, 8, 1), torch.nn.SiLU()),
        conv2, bn2, torch.nn.Upsample(scale_factor=2), torch.nn.Conv2d(8, 4, 1), torch.nn.ELU(),
    ).eval()
    for x in (torch.randn(2, 3, 16, 12), torch.randn(2, 3, 16, 12).to(memory_format=_CL)):
        with torch.no_grad():
            ref = seq(x.contiguous())
            out, calls = _packed_ran(lambda: apply_conv_bn_seq(seq, x))
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
            assert calls == (4 if x.is_contiguous(memory_format=_CL) and not x.is_contiguous() and conv_module._HAVE_PACKED_CONV else 0)
    seen = []
    seq[2].register_forward_hook(lambda m, i, o: seen.append("relu6"))
    with torch.no_grad():
        torch.testing.assert_close(apply_conv_bn_seq(seq, x), ref, rtol=1e-5, atol=1e-5)
    assert seen == ["relu6"]
    seq.train()  # batch statistics: the modules themselves
    torch.testing.assert_close(apply_conv_bn_seq(seq, x), seq(x))


def test_std_conv_caches_its_kernel_only_while_the_weight_is_unchanged():

    torch.manual_seed(0)
    conv = StdConv2d(4, 6, 3, padding=1, eps=1e-6)
    x = torch.randn(2, 4, 8, 8)

    def ref():
        w = conv.weight.detach()
        mean, var = w.mean((1, 2, 3), keepdim=True), w.var((1, 2, 3), unbiased=False, keepdim=True)
        return F.conv2d(x, (w - mean) / torch.sqrt(var + 1e-6), conv.bias.detach(), padding=1)

    with torch.no_grad():
        torch.testing.assert_close(conv(x), ref(), rtol=1e-5, atol=1e-5)
        assert conv in conv_module._STANDARDIZED
        conv.weight.mul_(-2.0).add_(0.3)  # an optimizer step: the cached kernel is stale
        torch.testing.assert_close(conv(x), ref(), rtol=1e-5, atol=1e-5)
        conv.eps = 1e-2
        assert not torch.allclose(conv(x), ref(), rtol=1e-4, atol=1e-4)  # eps is part of the key
        conv.eps = 1e-6
    out = conv(x)  # autograd: computed from the parameter, and the cached copy is dropped
    assert conv not in conv_module._STANDARDIZED
    out.sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def _depthwise_pair(C, k, stride, dilation, padding, bias, dtype=torch.float64):
    """(nn.Conv2d, visionzoo Conv2d) depthwise with the same weights."""
    ref = torch.nn.Conv2d(C, C, k, stride, padding, dilation=dilation, groups=C, bias=bias).to(dtype)
    ours = Conv2d(C, C, k, stride, padding, dilation=dilation, groups=C, bias=bias).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize(
    "C, k, stride, dilation, padding, bias, side, channels_last",
    [
        (8, 7, 1, 1, 3, True, (13, 11), False),  # ConvNeXt / ConvMixer: 'same' 7x7
        (6, 5, 2, 1, 2, False, (12, 12), False),  # EfficientNet's strided 5x5, no bias
        (4, (5, 3), 1, 2, (4, 2), True, (9, 10), True),  # rectangular, dilated, channels-last
        (3, 5, 3, 1, 0, True, (17, 16), False),  # stride 3 leaves input rows unused
        (5, 7, 2, 2, 1, True, (20, 21), True),
        (2, 9, 1, 1, 4, True, (4, 5), False),  # a map smaller than the kernel
    ],
)
def test_depthwise_conv_gradients_equal_autograd(C, k, stride, dilation, padding, bias, side, channels_last):
    """layers.Conv2d computes a depthwise convolution's weight gradient in its own way on the CPU
    (one depthwise convolution over the batch's planes); every gradient equals autograd's of
    nn.Conv2d with the same weights, also second order (gradgradcheck; its fast mode checks u^T J v
    for random u, v instead of every entry of the Jacobians: under a second instead of up to 25 s a case)."""
    torch.manual_seed(0)
    ref, ours = _depthwise_pair(C, k, stride, dilation, padding, bias)
    x = torch.randn(2, C, *side, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    y_ref, y = ref(x), ours(x)
    assert type(y.grad_fn).__name__ == "_DepthwiseConv2dBackward"  # the path under test ran
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    g = torch.randn_like(y_ref)
    expected = torch.autograd.grad(y_ref, [x, *ref.parameters()], g)
    got = torch.autograd.grad(y, [x, *ours.parameters()], g)
    for e, o in zip(expected, got):
        torch.testing.assert_close(o, e, rtol=1e-10, atol=1e-10)
    params = [x, ours.weight] + ([ours.bias] if bias else [])
    assert torch.autograd.gradgradcheck(lambda *t: conv_module._DepthwiseConv2d.apply(*t[:2], t[2] if bias else None, ours.stride, ours.padding, ours.dilation), params, fast_mode=True)


def test_depthwise_weight_grad_takes_the_weights_layout():
    """A channels-last model (weights too) gets its depthwise weight gradient in the weight's
    strides, as autograd gives nn.Conv2d's: DDP's buckets follow them (else a stride warning)."""
    ref, ours = _depthwise_pair(6, 5, 1, 1, 2, True, torch.float32)
    ref, ours = (m.to(memory_format=torch.channels_last) for m in (ref, ours))
    x = torch.randn(2, 6, 9, 9).contiguous(memory_format=torch.channels_last)
    for m in (ref, ours):
        m(x).square().sum().backward()
    assert ours.weight.grad.stride() == ref.weight.grad.stride() == ours.weight.stride()
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)


def test_depthwise_weight_grad_float32_batch():
    """float32, ConvNeXt-T's first-stage shape at batch 4: the weight gradient matches oneDNN's
    to float rounding."""
    torch.manual_seed(0)
    ref, ours = _depthwise_pair(96, 7, 1, 1, 3, True, torch.float32)
    x = torch.randn(4, 96, 56, 56)
    g = torch.randn(4, 96, 56, 56)
    expected = torch.autograd.grad(ref(x), list(ref.parameters()), g)
    got = torch.autograd.grad(ours(x), list(ours.parameters()), g)
    for e, o in zip(expected, got):
        torch.testing.assert_close(o, e, rtol=1e-5, atol=1e-5 * float(e.abs().max()))


def test_depthwise_grad_path_stays_out_of_the_way():
    """Where oneDNN's own gradient is fast (3x3) or the convolution is not depthwise, where no
    weight gradient is needed, under autocast and under torch.func, Conv2d is nn.Conv2d."""
    x = torch.randn(2, 4, 9, 9, requires_grad=True)

    def grad_fn(conv, inp=x):
        return type(conv(inp).grad_fn).__name__

    assert grad_fn(Conv2d(4, 4, 3, padding=1, groups=4)) == "ConvolutionBackward0"
    assert grad_fn(Conv2d(4, 4, 5, padding=2, groups=2)) == "ConvolutionBackward0"
    assert grad_fn(Conv2d(4, 8, 5, padding=2, groups=4)) == "ConvolutionBackward0"  # depth multiplier 2
    assert grad_fn(Conv2d(4, 4, 5, padding="same", groups=4)) == "ConvolutionBackward0"
    assert grad_fn(Conv2d(4, 4, 5, padding=2, groups=4, padding_mode="reflect")) == "ConvolutionBackward0"
    frozen = Conv2d(4, 4, 5, padding=2, groups=4).requires_grad_(False)
    assert grad_fn(frozen) == "ConvolutionBackward0"
    with torch.no_grad():
        assert Conv2d(4, 4, 5, padding=2, groups=4)(x).grad_fn is None
    conv = Conv2d(4, 4, 5, padding=2, groups=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert grad_fn(conv) == "ConvolutionBackward0"
    params = dict(conv.named_parameters())
    ref = torch.nn.Conv2d(4, 4, 5, padding=2, groups=4)
    ref.load_state_dict(conv.state_dict())
    loss = lambda m: lambda p, inp: torch.func.functional_call(m, p, (inp,)).square().sum()  # noqa: E731
    got = torch.func.grad(loss(conv))(params, x.detach())
    expected = torch.func.grad(loss(ref))(dict(ref.named_parameters()), x.detach())
    torch.testing.assert_close(got["weight"], expected["weight"])
    for k in (3, 5):  # FX symbolic tracing (torchvision's feature extraction) sees F.conv2d
        traced = torch.fx.symbolic_trace(Conv2d(4, 4, k, padding=k // 2, groups=4))
        assert [n.target for n in traced.graph.nodes if n.op == "call_function"] == [F.conv2d]


@pytest.mark.parametrize("shape, dtype, std", [((3000, 700), torch.float32, 0.02), ((5, 40000), torch.float32, 1.0),
                                               ((700, 300), torch.bfloat16, 0.02)])
def test_trunc_normal_is_the_truncated_normal(shape, dtype, std):
    """The initialisation of ViT-style models: N(0, std) truncated at +-2 std (scipy's truncnorm by
    a Kolmogorov-Smirnov test), on a tensor of two chunks and more, a non-contiguous one (a
    transposed view) and in bfloat16; every value in range."""
    from scipy import stats

    from visionzoo.layers.helpers import trunc_normal_

    torch.manual_seed(0)
    t = torch.empty(shape, dtype=dtype)
    view = t.t() if shape[0] == 5 else t  # (a column-major view: filled through a copy)
    trunc_normal_(view, std)
    x = t.float().flatten()
    assert x.abs().max() <= torch.tensor(2 * std, dtype=dtype).float()  # (the bound in the tensor's precision)
    assert x.unique().numel() > (x.numel() // 4 if dtype == torch.float32 else 1000)
    sample = x[torch.randperm(x.numel())[:200_000]].double().numpy() / std
    if dtype == torch.float32:
        assert stats.kstest(sample, stats.truncnorm(-2, 2).cdf).pvalue > 1e-3
    assert abs(sample.std() - stats.truncnorm(-2, 2).std()) < 0.01 and abs(sample.mean()) < 0.01
