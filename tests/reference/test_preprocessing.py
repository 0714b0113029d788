"""Eval preprocessing against timm's: every registered configuration, one real photo."""

import math

import numpy as np
import pytest
import torch

import visionzoo
from visionzoo.registry import get_entry
from visionzoo.train.data import eval_transform

timm_data = pytest.importorskip("timm.data")


def _configs():
    seen = {}
    for name in visionzoo.list_models():
        c = get_entry(name).default_cfg
        key = (c["input_size"][1], round(c["crop_pct"], 6), c["interpolation"], tuple(c["mean"]), tuple(c["std"]), c.get("crop_mode", "center"))
        seen.setdefault(key, name)
    return sorted(seen.items())


@pytest.mark.parametrize("key, name", _configs(), ids=lambda v: v if isinstance(v, str) else "")
def test_eval_transform_equals_timms(key, name):
    """Same resize (timm floors img_size / crop_pct; the short side, or both where crop_mode is
    "squash"), crop, interpolation and normalisation.
    timm resizes the PIL image, we the uint8 tensor (torchvision's v2 pipeline): a pixel may
    round one grey level apart, two where the photo is upsampled (its short side is 300 px:
    EfficientNet-B3's resize to 332, B4..B7's to 412-632); a one-pixel-off resize moves most
    pixels."""
    from PIL import Image
    from skimage import data

    size, crop_pct, interpolation, mean, std, crop_mode = key
    img = Image.fromarray(data.chelsea())  # 451 x 300
    ours = eval_transform(size, mean, std, crop_pct=crop_pct, interpolation=interpolation, crop_mode=crop_mode)(img)
    theirs = timm_data.create_transform(input_size=(3, size, size), mean=mean, std=std, crop_pct=crop_pct, interpolation=interpolation, crop_mode=crop_mode)(img)
    assert ours.shape == theirs.shape == (3, size, size)
    grey_level = 1 / 255 / np.min(std)
    upsampled = math.floor(size / crop_pct + 1e-6) > min(img.size)
    assert (ours - theirs).abs().max() <= (2.01 if upsampled else 1.01) * grey_level, name
    assert (ours - theirs).abs().mean() < 1e-3, name


def test_torchvision_preset_resize():
    """swin_t's crop_pct 224/232 states torchvision's resize to 232 (float division must not floor it to 231)."""
    from torchvision.models import Swin_T_Weights

    from skimage import data

    img = torch.from_numpy(data.chelsea()).permute(2, 0, 1).contiguous()  # uint8 (3, 300, 451)
    c = visionzoo.create_model("swin_t").default_cfg
    ours = eval_transform(224, c["mean"], c["std"], crop_pct=c["crop_pct"], interpolation=c["interpolation"])(img)
    theirs = Swin_T_Weights.IMAGENET1K_V1.transforms()(img)
    diff = (ours - theirs).abs()  # a fifth of the pixels round one grey level apart (v2 vs v1 uint8 resize);
    # a resize to 231 or 233 instead moves almost all, by 0.08-0.1 on average
    assert diff.max() <= 1.01 / 255 / min(c["std"]) and diff.mean() < 0.01


def test_crop_mode_is_timms_where_the_resize_is():
    """Where a registered model states the input size, crop_pct and interpolation of timm's default
    weights, it states their crop mode too: the CLIP towers fine-tuned at 336-384 and ConvNeXt
    V2-H at 384 were evaluated with the whole image resized to the input ("squash"); a centre
    crop of the same size shows the network another image. (Elsewhere the paper's or
    torchvision's preprocessing is kept on purpose, EfficientNet's resolutions for one.)"""
    from timm.models import get_pretrained_cfg, is_model

    compared, wrong = 0, []
    for name in visionzoo.list_models():
        if not is_model(name):
            continue
        ours, theirs = get_entry(name).default_cfg, get_pretrained_cfg(name).to_dict()
        if (tuple(ours["input_size"]), round(ours["crop_pct"], 6), ours["interpolation"]) != (tuple(theirs["input_size"]), round(theirs["crop_pct"], 6), theirs["interpolation"]):
            continue
        compared += 1
        if ours.get("crop_mode", "center") != theirs.get("crop_mode", "center"):
            wrong.append((name, ours.get("crop_mode", "center"), theirs["crop_mode"]))
    assert compared > 300 and not wrong, (compared, wrong)
