"""Second derivatives (gradient penalties, ``create_graph=True``) of the attention families.

PyTorch's fused CPU attention kernel has no double backward (ViT and NesT raise with it on);
with :func:`visionzoo.layers.set_fused_attention` off, a penalty's gradients equal timm's
with its fused attention off too (timm's ``fused_attn``). Swin is here as the family with a
learned bias; CoAtNet's attention is the same :func:`~visionzoo.layers.attention` call (its
double backward through the convolutions takes minutes in float64 here)."""

import pytest
import timm
import torch

import visionzoo
from visionzoo.layers import set_fused_attention
from visionzoo.testing import build_random, max_rel_diff

CASES = [  # (name, narrow configuration both libraries build, input side): no padding needed
    ("vit_tiny_patch16_224", dict(depth=2, embed_dim=48, num_heads=2), 32),
    ("swin_tiny_patch4_window7_224", dict(embed_dim=16, depths=(2, 2), num_heads=(1, 2)), 56),
    ("nest_tiny", dict(embed_dims=(16, 32, 64), depths=(1, 1, 1), num_heads=(1, 2, 2)), 32),
]

def _penalty_grads(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of |d sum(logits) / d x|^2 (an R1-style penalty) with respect to every parameter."""
    model.train().zero_grad(set_to_none=True)
    xg = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(model(xg).sum(), xg, create_graph=True)
    gx.pow(2).sum().backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name, cfg, side", CASES)
def test_gradient_penalty_equals_timm_with_fused_attention_off(name, cfg, side):
    kw = dict(num_classes=5, img_size=side, drop_rate=0.0, drop_path_rate=0.0, **cfg)
    # (timm's nest_* fix their widths; its Nest class has nest_tiny's other settings)
    build = (lambda: timm.models.nest.Nest(**kw)) if name.startswith("nest") else (lambda: timm.create_model(name, **kw))
    ref = build_random(build).double()
    for m in ref.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    ours = visionzoo.create_model(name, checkpoint=ref.state_dict(), **kw).double()
    assert set_fused_attention(ours, False) > 0
    x = torch.randn(2, 3, side, side, dtype=torch.float64)
    got, expect = _penalty_grads(ours, x), _penalty_grads(ref, x)
    assert got.keys() == expect.keys()
    worst = max((max_rel_diff(got[n], expect[n]), n) for n in expect if expect[n].abs().max() > 1e-12)
    assert worst[0] < 1e-9, worst
    set_fused_attention(ours, True)  # back on: the fused kernel's forward, same logits
    with torch.no_grad():
        assert max_rel_diff(ours.eval()(x), ref.eval()(x)) < 1e-9


def test_set_fused_attention_refuses_a_model_without_attention():
    with pytest.raises(ValueError, match="no attention module"):
        set_fused_attention(visionzoo.create_model("resnet18"), False)
