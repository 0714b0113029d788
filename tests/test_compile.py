"""torch.compile without graph breaks, for every family."""

import pytest
import torch

import visionzoo

from family_models import shallow_options, small_side, smallest_per_family

FAMILIES = smallest_per_family()


@pytest.mark.parametrize("grad", ["enable_grad", "inference_mode"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_no_graph_breaks(family, grad):
    """torch._dynamo.explain traces the forward without compiling it: one graph, no breaks (deep
    stage tables at 2 blocks a stage: each block is the same code). Also in inference, where
    the eager CPU paths read folded weights from caches whose stamps dynamo cannot trace
    (CoAtNet, EVA and layer-scale ViTs broke once a block; the caches stand aside while compiling)."""
    options = shallow_options(FAMILIES[family])
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
