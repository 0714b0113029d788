"""torch.compile without graph breaks, for every family."""

import pytest
import torch

import visionzoo

from family_models import shallow_options, small_side, smallest_per_family

FAMILIES = smallest_per_family()


@pytest.mark.parametrize("grad", ["enable_grad", "inference_mode"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_no_graph_breaks(family, grad):
    """torch._dynamo.explain traces the forward without compiling it: one graph, no breaks (stage
    tables at 2 blocks a stage, plain networks at 2 blocks: each further block is the same code). Also in inference, where
    the eager CPU paths read folded weights from caches whose stamps dynamo cannot trace
    (CoAtNet, EVA and layer-scale ViTs broke once a block; the caches stand aside while compiling)."""
    options = shallow_options(FAMILIES[family], compact=True)
    if family == "vit":
        options["init_values"] = 1e-5  # layer scale, folded in inference (timm's DeiT3, DINOv2)
    model = visionzoo.create_model(FAMILIES[family], num_classes=10, **options).eval()
    S = small_side(model)
    torch._dynamo.reset()
    with getattr(torch, grad)():
        explanation = torch._dynamo.explain(model)(torch.randn(2, 3, S, S))
    assert explanation.graph_break_count == 0, [str(b.reason) for b in explanation.break_reasons][:3]
    assert explanation.graph_count == 1


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "resnet18"])
def test_grad_checkpointing_traces_without_graph_breaks(name):
    """Training with --grad-checkpointing and --compile: the checkpointed blocks stay in one graph."""
    model = visionzoo.create_model(name, num_classes=10, img_size=64).train()
    model.set_grad_checkpointing()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 64, 64))
    assert explanation.graph_break_count == 0, [str(b.reason) for b in explanation.break_reasons][:3]
    assert explanation.graph_count == 1


def test_compiled_model_matches_eager():
    model = visionzoo.create_model("vit_tiny_patch16_224", img_size=32, num_classes=10, depth=2).eval()
    x = torch.randn(2, 3, 32, 32)
    torch._dynamo.reset()
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_compiled_family_matches_eager(family):
    model = visionzoo.create_model(FAMILIES[family], num_classes=10).eval()
    S = small_side(model)
    x = torch.randn(2, 3, S, S)
    torch._dynamo.reset()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model)(x), model(x), rtol=1e-4, atol=1e-4)


def test_position_embedding_resize_for_compiled_training_equals_torchs(monkeypatch):
    """A compiled ViT training step at a second input size failed (torch's fake kernel of the
    antialiased bicubic backward takes no symbolic size): while compiling with grad, the resize
    runs as row and column weight matrices. Values and gradients equal F.interpolate's."""
    from visionzoo.layers.pos_embed import resample_abs_pos_embed

    torch.manual_seed(0)
    for old, new, prefix in (((14, 14), (3, 2), 1), ((14, 14), (20, 17), 0), ((7, 9), (5, 11), 2)):
        pe = torch.randn(1, prefix + old[0] * old[1], 8, requires_grad=True)
        w = torch.randn(1, prefix + new[0] * new[1], 8)
        out = []
        for compiling in (False, True):
            monkeypatch.setattr(torch.compiler, "is_compiling", lambda c=compiling: c)
            pe.grad = None
            y = resample_abs_pos_embed(pe, new, old, num_prefix_tokens=prefix)
            (y * w).sum().backward()
            out.append((y.detach(), pe.grad.clone()))
        for a, b in zip(*out):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_compiled_vit_trains_at_a_second_input_size():
    """The end-to-end case of the test above: dynamo compiles the second size dynamically."""
    model = visionzoo.create_model("deit_tiny_patch16_224", num_classes=10, depth=1).train()
    compiled = torch.compile(model)
    torch._dynamo.reset()
    for side in (32, 48, 64):
        x = torch.randn(2, 3, side, side)
        model.zero_grad()
        compiled(x).sum().backward()
        got = model.pos_embed.grad.clone()
        model.zero_grad()
        model(x).sum().backward()
        torch.testing.assert_close(got, model.pos_embed.grad, rtol=1e-4, atol=1e-4)
