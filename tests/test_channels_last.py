"""CPU inference of CNN classifiers runs on a channels-last copy of an NCHW input."""

from __future__ import annotations

import pytest
import torch

import visionzoo
from visionzoo.testing import max_rel_diff


def _first_conv_input_is_channels_last(model, x, grad: bool) -> bool:
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    seen = []
    handle = conv.register_forward_pre_hook(lambda mod, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    with torch.set_grad_enabled(grad):
        out = model(x)
    handle.remove()
    return seen[0], out


@pytest.mark.parametrize("name", ["resnet18", "googlenet", "vgg11", "regnetx_002", "efficientnet_b0"])
def test_cnn_classifiers_run_cpu_inference_channels_last(name):
    torch.manual_seed(0)
    model = visionzoo.create_model(name, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    cl, out = _first_conv_input_is_channels_last(model, x, grad=False)
    assert cl and out.shape == (2, 5)
    assert not _first_conv_input_is_channels_last(model, x, grad=True)[0]  # autograd: the caller's layout
    model.cpu_channels_last = False
    plain, ref = _first_conv_input_is_channels_last(model, x, grad=False)
    assert not plain and max_rel_diff(out, ref) < 1e-5
    model.cpu_channels_last = True
    model.train()
    assert not _first_conv_input_is_channels_last(model, x, grad=False)[0]  # batch statistics: untouched


def test_features_keep_the_callers_layout():
    model = visionzoo.create_model("resnet18", features_only=True).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert all(f.is_contiguous() for f in feats)
