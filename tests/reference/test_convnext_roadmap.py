"""The ConvNeXt paper's roadmap: one change per step, Fig. 2's costs, and ConvNeXt-T at the end."""

import dataclasses

import timm
import torch

import visionzoo
from visionzoo.cli import main
from visionzoo.registry import get_entry
from visionzoo.testing import build_random, max_rel_diff

STEPS = visionzoo.list_models("convnext_roadmap_*", sort=False)


def test_steps_in_the_papers_order_each_changing_one_design_choice():
    assert [s.removeprefix("convnext_roadmap_") for s in STEPS] == [
        "r50", "stage_ratio", "patchify", "depthwise", "width", "inverted", "dw_up",
        "k5", "k9", "k11", "k7", "gelu", "fewer_acts", "fewer_norms", "ln", "sep_downsample",
    ]
    previous = None
    for name in STEPS:
        cfg = dataclasses.asdict(get_entry(name).config)
        if previous is not None and not name.endswith(("_k9", "_k11", "_k7")):
            changed = {k for k in cfg if cfg[k] != previous[k]}
            # the inverted bottleneck swaps the block and, with it, the widths it carries
            expected = 3 if name.endswith("_inverted") else 1
            assert len(changed) == expected, (name, changed)
        if not name.endswith(("_k5", "_k9", "_k11")):
            previous = cfg
    r50 = get_entry("convnext_roadmap_r50").config
    assert r50.depths == (3, 4, 6, 3) and r50.stem == "resnet" and r50.block == "bottleneck" and r50.kernel_size == 3


def test_resnet50_start_has_resnet50s_parameters_plus_layer_scale():
    with torch.device("meta"):
        ours = sum(p.numel() for p in visionzoo.create_model("convnext_roadmap_r50").parameters())
        ref = sum(p.numel() for p in timm.create_model("resnet50").parameters())
    layer_scale = 3 * 256 + 4 * 512 + 6 * 1024 + 3 * 2048
    conv_biases = 64 + 3 * (64 + 64 + 256) + 256 + 4 * (128 + 128 + 512) + 512 + 6 * (256 + 256 + 1024) + 1024 + 3 * (512 + 512 + 2048) + 2048  # stem, blocks, projections
    assert ours == ref + layer_scale + conv_biases


def test_last_step_is_convnext_tiny_and_loads_its_weights():
    last = visionzoo.model_info("convnext_roadmap_sep_downsample")
    tiny = visionzoo.model_info("convnext_tiny")
    assert last["params"] == tiny["params"]
    assert abs(last["gmacs"] - tiny["gmacs"]) < 1e-9
    ref = build_random(lambda: timm.create_model("convnext_tiny", num_classes=10))
    ours = visionzoo.create_model("convnext_roadmap_sep_downsample", num_classes=10).eval()
    visionzoo.load_checkpoint(ours, ref.state_dict(), source="timm")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4


def test_every_step_costs_what_figure_2_says():
    for name in STEPS:
        info = visionzoo.model_info(name)
        assert abs(info["gmacs"] - info["published_gmacs"]) / info["published_gmacs"] < 0.03, (name, info["gmacs"])


def test_info_lists_each_steps_params_and_gmacs(capsys):
    assert main(["info", "convnext_roadmap*"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 + len(STEPS)
    rows = [line.split() for line in lines[1:]]
    assert [r[0] for r in rows] == STEPS
    last = rows[-1]
    assert float(last[1]) == round(visionzoo.model_info("convnext_tiny")["params"] / 1e6, 2)
    assert float(last[3]) == 4.5


def test_invalid_combinations_are_refused():
    import pytest

    with pytest.raises(ValueError, match="dw_first"):
        visionzoo.create_model("convnext_roadmap_r50", fewer_acts=True)
    with pytest.raises(ValueError, match="block must be"):
        visionzoo.create_model("convnext_roadmap_r50", block="mlp")
