"""Every registered model that timm also has, against timm with the same random weights.

The per-family reference tests check chosen variants in depth; this module checks all of
them the way a user would run them: CPU inference in eval mode with autograd off (the fast
paths: packed convolutions, fused linear layers, folded norms), logits and intermediate maps,
and one training-mode backward pass (gradients and BatchNorm statistics). Marked slow (12 minutes
on 2 cores): ``pytest -m slow tests/reference/test_every_shared_model.py``.
"""

import math

import pytest
import timm
import torch

import visionzoo
from visionzoo.testing import build_random, max_rel_diff

SHARED = sorted(set(visionzoo.list_models()) & set(timm.list_models()))
NO_DROPOUT = dict(drop_rate=0.0, drop_path_rate=0.0)


def _params(name: str) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in timm.create_model(name).parameters())


def _timm(name: str) -> tuple[torch.nn.Module, dict]:
    """timm's model with dropout and stochastic depth off (and the keywords used to say so:
    families without stochastic depth take no ``drop_path_rate``)."""
    for kw in (NO_DROPOUT, dict(drop_rate=0.0)):
        try:
            model = build_random(lambda: timm.create_model(name, num_classes=7, **kw))
        except TypeError:
            continue
        with torch.no_grad():  # position biases and embeddings at unit scale, not the weights' 0.02:
            for n, p in model.named_parameters():  # a transposed or misindexed table then moves the logits
                if n.endswith(("relative_position_bias_table", "pos_embed")):
                    p.normal_(generator=torch.Generator().manual_seed(2))
        return model, kw
    raise AssertionError(f"timm builds {name} with neither {NO_DROPOUT} nor drop_rate alone")


def _input(ref: torch.nn.Module, ours: torch.nn.Module, batch: int = 2) -> torch.Tensor:
    """A batch at a size off the default (31 x 63 px smaller, rounded up to what the network
    takes) where timm's model takes it, else at the default size (fixed-size transformers)."""
    _, H, W = ref.pretrained_cfg.get("input_size", (3, 224, 224))
    m = max(getattr(ours, "input_multiple", 1), 1)
    off = tuple(max(math.ceil((s - d) / m) * m, m) for s, d in ((H, 31), (W, 63)))
    x = torch.randn(batch, 3, *off, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            ref.eval()(x[:1])
        return x
    except Exception:  # timm's model takes only its own size
        return torch.randn(batch, 3, H, W, generator=torch.Generator().manual_seed(0))


def _pair(name: str, max_params: float) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    """(visionzoo's model, timm's, an input batch) with the same random weights; skipped above
    ``max_params`` parameters (time and memory on a 2-core host)."""
    if _params(name) > max_params:
        pytest.skip(f"{name}: over {max_params / 1e6:.0f} M parameters")
    ref, kw = _timm(name)
    ours = visionzoo.create_model(name, num_classes=7, checkpoint=ref.state_dict(), **kw)
    return ours, ref, _input(ref, ours)


def _fp64_spread(ours: torch.nn.Module, ref: torch.nn.Module, x: torch.Tensor, got: torch.Tensor, expect: torch.Tensor) -> None:
    """Where fp32 rounding grows through a deep random network: the architectures must agree
    in float64, and visionzoo's fp32 logits must be no further from them than timm's are."""
    ours64, ref64 = ours.double(), ref.double()
    with torch.inference_mode():
        a64, b64 = ours64(x.double()), ref64(x.double())
    assert max_rel_diff(a64, b64) < 1e-8
    assert max_rel_diff(got, b64) <= 4 * max_rel_diff(expect, b64) + 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", SHARED)
def test_inference_equals_timm(name):
    ours, ref, x = _pair(name, 350e6)
    ours.eval()
    with torch.inference_mode():
        got, expect = ours(x), ref.eval()(x)
        maps = visionzoo.create_model(name, features_only=True, checkpoint=ref.state_dict()).eval()(x)
        expect_maps = ref.forward_intermediates(x, intermediates_only=True)
    assert got.shape == expect.shape == (x.shape[0], 7)
    by_shape = [e for e in expect_maps if any(e.shape == m.shape for m in maps)]
    assert by_shape, f"no map of {name}'s features_only output matches one of timm's forward_intermediates"
    bounds = [1e-4] * len(expect_maps)
    if max_rel_diff(got, expect) >= 1e-5:  # then visionzoo's fp32 error must be within timm's own
        _fp64_spread(ours, ref, x, got, expect)  # (ref is float64 from here)
        if max_rel_diff(got, expect) >= 1e-4:
            return  # rounding grown through a deep random network: the maps differ as much
        # each map within 5e-4 or 4x timm's own fp32 error from float64, as the logits (EfficientNet-B6's
        # maps: 1.5e-4 at two threads; ResNet-101-D's deepest 5.0e-4, with live BatchNorm statistics)
        with torch.inference_mode():
            exact = ref.forward_intermediates(x.double(), intermediates_only=True)
        bounds = [max(5e-4, 4 * max_rel_diff(e, e64)) for e, e64 in zip(expect_maps, exact, strict=True)]
    for m in maps:  # each features_only map is one of timm's intermediates
        assert min(max_rel_diff(m, e) / b if e.shape == m.shape else math.inf for e, b in zip(expect_maps, bounds, strict=True)) < 1


def _training_step(m: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict, dict]:
    """One training-mode backward pass (a fixed random projection of the output as the loss):
    the loss, every parameter's gradient and the BatchNorm statistics it leaves."""
    m.train().zero_grad(set_to_none=True)
    out = m(x)
    out = out[0] if isinstance(out, (tuple, list)) else out
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    loss = (out * w).sum()
    loss.backward()
    grads = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    stats = {n: b.detach().clone() for n, b in m.named_buffers() if n.endswith(("running_mean", "running_var"))}
    return loss.detach(), grads, stats


def _grad_error(grads: dict, ref_grads: dict) -> float:
    """The largest gradient difference, each gradient against its own scale floored at 1e-3 of
    the largest (gradients that vanish up to rounding, e.g. the bias of a BatchNorm that
    another BatchNorm follows, compare as 0)."""
    floor = 1e-3 * max(g.abs().max() for g in ref_grads.values()).double()
    # (timm's small ConvNeXts hold their MLPs as 1x1 convolutions: our linear weights, reshaped)
    return max(((grads[n].double().reshape(g.shape) - g.double()).abs().max() / g.abs().max().double().clamp_min(floor)).item() for n, g in ref_grads.items())


@pytest.mark.slow
@pytest.mark.parametrize("name", SHARED)
def test_training_step_equals_timm(name):
    ours, ref, x = _pair(name, 100e6)
    (loss, grads, stats), (ref_loss, ref_grads, ref_stats) = _training_step(ours, x), _training_step(ref, x)
    assert sorted(grads) == sorted(ref_grads) and sorted(stats) == sorted(ref_stats)
    assert abs(loss - ref_loss) <= 1e-4 * ref_loss.abs().clamp_min(1.0)
    for n, s in ref_stats.items():
        assert (stats[n] - s).abs().max() <= 1e-4 * s.abs().max().clamp_min(1.0), n
    if _grad_error(grads, ref_grads) < 1e-3:
        return
    # fp32 rounding grown through a deep random network: the same step in float64 must agree,
    # and visionzoo's fp32 gradients be no further from it than timm's
    _, grads64, _ = _training_step(ours.double(), x.double())
    _, ref_grads64, _ = _training_step(ref.double(), x.double())
    assert _grad_error(grads64, ref_grads64) < 1e-8
    assert _grad_error(grads, ref_grads64) <= 4 * _grad_error(ref_grads, ref_grads64) + 1e-4
