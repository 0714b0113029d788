"""visionzoo.analysis: receptive fields, attention complexity, FLOP breakdown, attention pictures."""

import itertools
import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import visionzoo
from visionzoo.analysis import (
    attention_complexity,
    attention_rollout,
    capture_attention,
    coatnet_attention_complexity,
    flops_breakdown,
    hdc_check,
    mean_attention_distance,
    nest_attention_complexity,
    plot_attention_distance,
    plot_attention_rollout,
    plot_position_embedding_similarity,
    plot_shift_window_masks,
    position_embedding_similarity,
    receptive_field,
    receptive_field_1d,
    shift_window_masks,
    shift_window_regions,
    suggest_rates,
)
from visionzoo.cli import main as cli_main
from visionzoo.layers.attention import Attention
from visionzoo.layers.window import shift_window_mask, window_partition

PIL = pytest.importorskip("PIL.Image")
pytest.importorskip("matplotlib")


# --------------------------------------------------------------------------- receptive fields
def _brute_force_rf(rates, k):
    """Gradient of the centre output of stacked all-ones dilated convs w.r.t. the input."""
    span = 1 + (k - 1) * sum(rates)
    x = torch.zeros(1, 1, span, span, dtype=torch.float64, requires_grad=True)
    y = x
    for r in rates:
        y = F.conv2d(y, torch.ones(1, 1, k, k, dtype=torch.float64), dilation=r)
    assert y.shape[-2:] == (1, 1)
    y.sum().backward()
    return x.grad[0, 0].round().long().numpy()


def _enumerated_rf(rates, k):
    """Explicit enumeration of every path: one tap offset per layer and axis."""
    span = 1 + (k - 1) * sum(rates)
    out = np.zeros((span, span), dtype=np.int64)
    taps = [[(r * i, r * j) for i in range(k) for j in range(k)] for r in rates]
    for path in itertools.product(*taps):
        out[sum(p[0] for p in path), sum(p[1] for p in path)] += 1
    return out


@pytest.mark.parametrize("rates, k", [([1, 2, 5], 3), ([2, 2, 2], 3), ([1, 2, 3], 3), ([2, 4, 6], 3), ([1, 3], 5), ([1, 2, 5, 1, 2, 5], 3)])
def test_receptive_field_equals_brute_force(rates, k):
    rf = receptive_field(rates, k)
    assert rf.dtype.kind == "i"
    np.testing.assert_array_equal(rf, _brute_force_rf(rates, k))


@pytest.mark.parametrize("rates, k", [([1, 2], 3), ([2, 2, 2], 3), ([1, 3], 5)])
def test_receptive_field_equals_path_enumeration(rates, k):
    np.testing.assert_array_equal(receptive_field(rates, k), _enumerated_rf(rates, k))


def test_receptive_field_size_pads_centred():
    rf = receptive_field([1, 2], 3, size=11)
    assert rf.shape == (11, 11) and rf.sum() == 9**2
    np.testing.assert_array_equal(rf[2:9, 2:9], receptive_field([1, 2], 3))
    with pytest.raises(ValueError, match="smaller"):
        receptive_field([1, 2], 3, size=5)
    with pytest.raises(ValueError, match="positive"):
        receptive_field([0, 2])


def test_hdc_check_verdicts():
    for rates in ([1, 2, 5], [1, 2, 5, 1, 2, 5], [1, 2, 3]):
        v = hdc_check(rates)
        assert not v["gridding"] and v["holes"] == 0 and v["hdc_ok"] and v["suggestion"] is None, rates
    v = hdc_check([2, 4, 6])
    assert v["gridding"] and v["common_factor"] == 2 and not v["hdc_ok"] and v["span"] == 25
    assert v["holes"] == int((receptive_field([2, 4, 6]) == 0).sum()) == 25 * 25 - 13 * 13
    v = hdc_check([2, 2, 2])
    assert v["gridding"] and v["common_factor"] == 2 and v["holes"] == 13 * 13 - 7 * 7
    v = hdc_check([1, 2, 9])  # no common factor, but M_2 = 5 > 3: holes
    assert v["gridding"] and v["common_factor"] is None and v["M"] == [3, 5, 9] and not v["hdc_ok"]
    assert hdc_check([1, 2, 5])["M"] == [1, 2, 5]


@pytest.mark.parametrize("rates", [[2, 4, 6], [2, 2, 2], [1, 2, 9], [2, 4, 6, 2, 4, 6], [6, 12, 18, 24], [4]])
def test_suggestion_has_no_gridding_and_same_span(rates):
    s = hdc_check(rates)["suggestion"]
    v = hdc_check(s)
    assert not v["gridding"] and v["hdc_ok"], s
    assert v["span"] == hdc_check(rates)["span"]
    assert suggest_rates([2, 4, 6]) == [1, 3, 8]
    assert suggest_rates([2, 4, 6, 2, 4, 6]) == [1, 3, 8, 1, 3, 8]  # a sawtooth, as HDC


@pytest.mark.parametrize("budget", [None, 1])
def test_suggestion_for_large_rates_ends(budget, monkeypatch):
    """Rates summing past ~1000 made the exhaustive search run without end; it now stops after a
    budget, with the best pattern found or (budget 1) the greedy one: hole-free, same span."""
    from visionzoo.analysis import receptive

    if budget is not None:
        monkeypatch.setattr(receptive, "SEARCH_BUDGET", budget)
    for rates, repeats in (([1100], 1), ([500, 600, 500, 600], 2)):
        s = suggest_rates(rates)
        group = s[: len(s) // repeats]
        assert s == group * repeats and group == sorted(group) and group[0] == 1
        assert not hdc_check(s)["gridding"] and hdc_check(s)["span"] == hdc_check(rates)["span"]


def test_documented_hole_free_rule_is_exact():
    """Sorted rates have no holes iff r_(i) <= 1 + (k-1) * (sum of the smaller ones); checked exhaustively."""
    for k in (2, 3, 5):
        for n in (1, 2, 3):
            for rates in itertools.product(range(1, 8), repeat=n):
                holes = hdc_check(list(rates), k)["holes"] > 0
                width, ok = 1, True
                for r in sorted(rates):
                    ok &= r <= width
                    width += (k - 1) * r
                assert holes == (not ok), (rates, k)


def test_cli_rf_writes_picture(tmp_path, capsys):
    out = tmp_path / "rf.png"
    assert cli_main(["rf", "--rates", "2,4,6", "--kernel", "3", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "gridding" in text and "1,3,8" in text and "factor 2" in text
    with PIL.open(out) as im:
        assert im.size == (640, 640)
    assert cli_main(["rf", "--rates", "1,2,5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["gridding"] is False
    assert cli_main(["rf", "--rates", "1,0"]) == 2
    capsys.readouterr()
    assert cli_main(["rf", "--rates", "2,3"]) == 0  # holes, yet the paper's rule passes: said so
    text = capsys.readouterr().out
    assert "gridding: 40 of 121" in text and "note: the rule and the count disagree" in text


@pytest.mark.parametrize("rates", [[2.5], [1.9, 2], [True, 2], ["2"]])
def test_non_integer_rates_are_refused_not_truncated(rates):
    with pytest.raises(ValueError, match="positive integers"):
        hdc_check(rates)
    with pytest.raises(ValueError, match="positive integers"):
        receptive_field(rates)
    assert hdc_check([2.0, np.int64(3)])["span"] == hdc_check([2, 3])["span"] == 11
    with pytest.raises(ValueError, match="kernel_size must be a positive integer"):
        hdc_check([1, 2], kernel_size=3.5)


def test_very_large_rates_are_counted_without_building_the_span(tmp_path, capsys):
    """hdc_check([10**9]) built a 2e9-long vector (16 GB; 100 s) to count holes that follow from
    the taps alone; the counts now follow the offsets reached. Dense maps past MAX_CELLS are
    refused with a message, not allocated; size is checked as a whole number."""
    from visionzoo.analysis import receptive

    v = hdc_check([10**9])
    assert v["span"] == 2 * 10**9 + 1 and v["holes"] == v["span"] ** 2 - 9 and v["gridding"]
    v = hdc_check([1, 10**6])  # two blocks of 3 offsets, 9 reached
    assert v["holes"] == (2 * 10**6 + 3) ** 2 - 81
    with pytest.raises(ValueError, match="more than this builds"):
        receptive_field([5000, 5000])
    assert cli_main(["rf", "--rates", "5000,5000", "--output", str(tmp_path / "rf.png")]) == 2
    assert "too large a map to draw; without --output the verdict is counted" in capsys.readouterr().err
    assert not (tmp_path / "rf.png").exists()
    with pytest.raises(ValueError, match="more than this builds"):
        receptive_field_1d([receptive.MAX_CELLS])
    assert receptive_field([1, 2], 3, size=9.0).shape == (9, 9)
    for size in (10.5, "9", True):
        with pytest.raises(ValueError, match="size must be a whole number"):
            receptive_field([1, 2], 3, size=size)


def test_one_by_one_kernels_never_grid():
    """K = 1 reads one pixel whatever the rates: no holes, and the HDC verdict agrees (a single
    rate-3 layer read as failing on its 'common factor', and the CLI printed that the rule and
    the count disagreed)."""
    for rates in ([3], [2, 4], [1, 5, 9]):
        v = hdc_check(rates, 1)
        assert v["span"] == 1 and not v["gridding"] and v["hdc_ok"] and v["common_factor"] is None, rates


# --------------------------------------------------------------------------- attention complexity
def _counted_macs(fn):
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops() / 2


@pytest.mark.parametrize("h, w, C, M", [(8, 8, 32, 4), (12, 6, 48, 3)])
def test_attention_complexity_matches_flop_counter(h, w, C, M):
    attn = Attention(C, num_heads=4, fused=False).eval()
    x = torch.randn(1, h, w, C)
    expected = attention_complexity(h, w, C, M)
    msa = _counted_macs(lambda: attn(x.reshape(1, h * w, C)))
    w_msa = _counted_macs(lambda: attn(window_partition(x, (M, M))))  # B*nW, M*M, C
    assert abs(msa - expected["msa"]) / expected["msa"] < 0.01
    assert abs(w_msa - expected["w_msa"]) / expected["w_msa"] < 0.01
    assert nest_attention_complexity(h, w, C, M) == expected["w_msa"]
    # CoAtNet: global attention plus a relative bias on every logit of every head
    bias = torch.randn(4, h * w, h * w)
    rel = _counted_macs(lambda: attn(x.reshape(1, h * w, C), bias))
    coat = coatnet_attention_complexity(h, w, C, num_heads=4)
    assert coat - 4 * (h * w) ** 2 == expected["msa"]
    assert abs(rel - expected["msa"]) / expected["msa"] < 0.01
    # the fused kernel, counted by model_info's counter, agrees too
    from visionzoo.factory import _FlopCounter

    fused = Attention(C, num_heads=4).eval()
    with torch.no_grad(), _FlopCounter() as fc:
        fused(x.reshape(1, h * w, C))
    assert abs(fc.get_total_flops() / 2 - expected["msa"]) / expected["msa"] < 0.01


@pytest.mark.parametrize("h, w, pad_small", [(10, 10, False), (5, 5, False), (6, 8, False), (14, 21, False), (5, 9, True)])
def test_w_msa_is_what_a_swin_block_runs_off_the_window_grid(h, w, pad_small):
    # maps that are not a multiple of the window (Swin-T at 160 or 192x256): Swin pads them,
    # and a side within one window is one window of its length (or, torchvision's rule, padded
    # up to the window); the projections and products run on the padded tokens
    from visionzoo.factory import _FlopCounter
    from visionzoo.models.swin import SwinBlock, plan_windows

    C, M = 32, 7
    block = SwinBlock(C, 4, (M, M), shifted=True).eval()
    plan = plan_windows(h, w, (M, M), True, torch.device("cpu"), pad_small=pad_small)
    x = torch.randn(1, h, w, C)
    with torch.no_grad(), _FlopCounter() as fc:  # (counts the fused kernel too)
        block.window_attention(x, plan)
    rule = {"pad_small": True} if pad_small else {}
    assert attention_complexity(h, w, C, M, **rule)["w_msa"] == fc.get_total_flops() // 2
    if max(h, w) <= M and not pad_small:  # one window over the whole map: global attention
        assert attention_complexity(h, w, C, M)["w_msa"] == attention_complexity(h, w, C, M)["msa"]


def test_window_attention_is_cheaper_beyond_the_window():
    c = attention_complexity(56, 56, 96, 7)
    assert c["w_msa"] < c["msa"]
    assert attention_complexity(7, 7, 96, 7)["w_msa"] == attention_complexity(7, 7, 96, 7)["msa"]


# --------------------------------------------------------------------------- FLOP breakdown
def test_flops_breakdown_sums_and_analytic_vit_split():
    b = flops_breakdown("vit_tiny_patch16_224")
    info = visionzoo.model_info("vit_tiny_patch16_224")
    assert b["gmacs"] == info["gmacs"] and b["params"] == info["params"]
    assert math.isclose(sum(b["stages"].values()), b["gmacs"], rel_tol=1e-9)
    assert math.isclose(sum(b["kinds"].values()), b["gmacs"], rel_tol=1e-9)
    assert list(b["stages"])[:2] == ["patch_embed", "blocks"]
    N, C, L = 197, 192, 12
    assert math.isclose(b["kinds"]["attention"], L * 2 * N * N * C / 1e9, rel_tol=1e-9)
    assert math.isclose(b["kinds"]["attention_proj"], L * 4 * N * C * C / 1e9, rel_tol=1e-9)
    assert math.isclose(b["kinds"]["mlp"], L * 2 * N * C * 4 * C / 1e9, rel_tol=1e-9)
    assert math.isclose(b["kinds"]["convolution"], 196 * 3 * 16 * 16 * C / 1e9, rel_tol=1e-9)
    assert b["published"]["gmacs"] == 1.26


def test_flops_breakdown_at_another_configuration_has_no_paper_figures():
    # patch 32 at 160 (a user's own ViT): 25 patches + the class token, counted by hand, and
    # the paper's 1.26 GMACs / 5.7 M were given as this network's, where model_info gives none
    b = flops_breakdown("vit_tiny_patch16_224", img_size=160, patch_size=32, in_chans=1, num_classes=10)
    N, C = 26, 192
    assert math.isclose(b["gmacs"], (25 * 32 * 32 * C + 12 * (2 * N * N * C + 12 * N * C * C) + C * 10) / 1e9, rel_tol=1e-9)
    info = visionzoo.model_info("vit_tiny_patch16_224", img_size=160, patch_size=32, in_chans=1, num_classes=10)
    assert b["published"] == {"note": info["published_note"]} and "patch_size=32" in info["published_note"]
    assert flops_breakdown("vit_tiny_patch16_224", num_classes=1000, drop_rate=0.1)["published"]["gmacs"] == 1.26


def test_flops_breakdown_hierarchical_and_uncalled_containers():
    b = flops_breakdown("convnext_tiny")
    assert [s for s in b["stages"] if s.startswith("stages.")] == [f"stages.{i}" for i in range(4)]
    assert math.isclose(sum(b["stages"].values()), b["gmacs"], rel_tol=1e-9)
    assert b["kinds"]["mlp"] > 0.9 * b["gmacs"] and b["kinds"]["attention"] == 0
    # HRNet indexes ModuleLists it never calls: attribution must not count twice
    h = flops_breakdown("hrnet_w18_small")
    assert math.isclose(sum(h["stages"].values()), h["gmacs"], rel_tol=1e-9)
    assert "(model)" not in h["stages"]


def test_flops_breakdown_rows_are_stages():
    """One row per stage (the modules from one feature map to the next), not per block
    (ResNet-50 gave 16 rows, layer1.0 ... layer4.2) nor per top-level child (DenseNet-121
    gave ``features`` at 100 %)."""
    r = flops_breakdown("resnet101")
    assert list(r["stages"]) == ["conv1", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert r["stage_levels"]["layer3"] == [3] and r["stage_levels"]["fc"] == []
    assert 0.6 < r["stages"]["layer3"] / r["gmacs"] < 0.7  # 23 of its 33 blocks
    d = flops_breakdown("densenet121")
    assert list(d["stages"]) == ["features.conv0", "features.denseblock1"] + [
        f"features.denseblock{i} (+ transition{i - 1})" for i in (2, 3, 4)
    ] + ["classifier"]
    v = flops_breakdown("vgg11")
    assert list(v["stages"])[:3] == ["features.0-1", "features.2-4", "features.5-9"]
    for b in (r, d, v):
        assert math.isclose(sum(b["stages"].values()), b["gmacs"], rel_tol=1e-9)


def test_flops_rows_of_a_features_only_vit_keep_the_blocks_in_one_row():
    """A features_only ViT / ConvMixer taking later blocks' maps showed the blocks before the first
    map taken in a stem row ('patch_embed ... blocks.8'): the blocks are one row, as the whole model's."""
    v = flops_breakdown("vit_tiny_patch16_224", img_size=64, depth=6, features_only=True, out_indices=(-1, -3))
    assert v["stage_levels"] == {"patch_embed": [], "blocks": [0, 1]}
    whole = flops_breakdown("vit_tiny_patch16_224", img_size=64, depth=6)["stages"]
    assert v["stages"] == pytest.approx({k: whole[k] for k in ("patch_embed", "blocks")}, rel=1e-9)
    c = flops_breakdown("convmixer_256_8", img_size=64, features_only=True, out_indices=(5,))
    assert c["stage_levels"] == {"stem": [], "blocks": [0]}


def _family_models():
    from family_models import smallest_per_family

    return sorted(set(smallest_per_family().values()))


@pytest.mark.parametrize("name", _family_models())
def test_flops_stages_follow_feature_info(name):
    """Every family: the rows that end feature maps are one per ``feature_info`` map in network
    order (ViT-like models, whose every block is a map: one row for the blocks), with at most a
    stem row before them and a head row after; they sum to the total and name the model's modules."""
    b = flops_breakdown(name)
    with torch.device("meta"):
        model = visionzoo.create_model(name)
    n = len(model.feature_info)
    rows, levels = list(b["stages"]), b["stage_levels"]
    assert math.isclose(sum(b["stages"].values()), b["gmacs"], rel_tol=1e-9)
    assert "(model)" not in rows
    ended = [levels[s] for s in rows if levels[s]]
    assert ended == ([list(range(n))] if model.block_features else [[k] for k in range(n)])
    maps = [i for i, s in enumerate(rows) if levels[s]]
    assert maps == list(range(maps[0], maps[-1] + 1)) and maps[0] <= 1 and len(rows) - 1 - maps[-1] <= 1
    assert maps[-1] >= 1  # more than one row before the head
    for s in rows:  # the first name of each row is a module of the model ("features.5-9": features.5)
        path = re.sub(r"\.(\d+)-\d+$", r".\1", s.split(" ")[0])
        model.get_submodule(path)


def test_flops_breakdown_counts_projections_run_as_matmuls_as_projections():
    """CoAtNet's attention projections are 1x1 convolutions run as matmuls over tokens; they
    count as ``attention_proj`` (as nn.Linear projections do), the MBConv 1x1s as convolutions."""
    b = flops_breakdown("coatnet_0_224")
    model = visionzoo.create_model("coatnet_0_224").eval()
    macs = {"proj": 0}

    def count(m, inp, out):
        macs["proj"] += out.numel() * inp[0].shape[-1]

    handles = [getattr(m, p).register_forward_hook(count) for n, m in model.named_modules() if n.endswith(".attn") for p in ("qkv", "proj")]
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    for h in handles:
        h.remove()
    assert macs["proj"] > 0
    assert math.isclose(b["kinds"]["attention_proj"], macs["proj"] / 1e9, rel_tol=1e-9)
    assert b["kinds"]["other"] < 0.001 * b["gmacs"]  # the MBConv 1x1s are convolutions
    assert math.isclose(sum(b["kinds"].values()), b["gmacs"], rel_tol=1e-9)


def _timm_macs(name, size):
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        m = timm.create_model(name).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        m(torch.zeros(1, 3, size, size, device="meta"))
    return fc.get_total_flops() / 2e9


def _timm_counterparts():
    """The smallest model of every family that timm also implements (same name)."""
    import timm

    from family_models import smallest_per_family

    names = sorted(n for n in smallest_per_family().values() if timm.is_model(n))
    for fam, name in (("vit", "vit_tiny_patch16_224"), ("convnext", "convnext_tiny"), ("hrnet", "hrnet_w18_small")):
        if name not in names:
            names.append(name)
    return names


@pytest.mark.parametrize("name", _timm_counterparts())
def test_model_info_gmacs_match_timm(name):
    """model_info's counter on our model against torch's FlopCounterMode on timm's, every family."""
    info = visionzoo.model_info(name)
    ref = _timm_macs(name, info["input_size"][-1])
    assert abs(info["gmacs"] - ref) / ref < 0.03, (info["gmacs"], ref)


def test_cli_flops(capsys):
    assert cli_main(["flops", "vit_tiny_patch16_224"]) == 0
    out = capsys.readouterr().out
    assert "per stage" in out and "per kind of layer" in out and "blocks" in out and "1.254 GMACs" in out
    assert cli_main(["flops", "vit_tiny_patch16_224", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["kinds"]) >= {"attention", "mlp", "convolution", "norm", "other"}
    assert cli_main(["flops", "--table", "convnext_*"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 1 + len(visionzoo.list_models("convnext_*"))
    tiny = next(r.split() for r in rows if r.startswith("convnext_tiny "))
    assert tiny[4:6] == ["4.456", "4.5"]  # counted, and the paper's figure as the paper gives it
    assert cli_main(["flops"]) == 2
    assert cli_main(["flops", "vit_tiny_patch16_224", "--table", "x"]) == 2


# --------------------------------------------------------------------------- attention pictures
def _small_vit(**kw):
    return visionzoo.create_model("vit_tiny_patch16_224", num_classes=10, img_size=64, depth=3, **kw).eval()


def test_capture_attention_matches_attention_map_and_keeps_outputs():
    m = _small_vit()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)
        with capture_attention(m) as w:
            out = m(x)
        tokens = m.blocks[0].norm1(m._embed(x)[0])
        expected = m.blocks[0].attn.attention_map(tokens)
    assert sorted(w) == [f"blocks.{i}.attn" for i in range(3)]
    assert w["blocks.0.attn"][0].shape == (2, 3, 17, 17)
    torch.testing.assert_close(w["blocks.0.attn"][0], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    # relative position embeddings (a subclass with its own bias) are captured too
    r = _small_vit(pos_embed="relative")
    with torch.no_grad(), capture_attention(r) as w:
        r(x)
    assert len(w) == 3 and torch.allclose(w["blocks.1.attn"][0].sum(-1), torch.ones(2, 3, 17))


def test_capture_attention_records_swin_windows_and_masks():
    """Swin's windowed attention is recorded too: (B*nW, nH, N, N) per block, rows summing to
    one, pairs the shift mask forbids at zero, and the logits unchanged."""
    m = visionzoo.create_model("swin_tiny_patch4_window7_224", num_classes=5, embed_dim=24, depths=(2, 2), num_heads=(1, 2)).eval()
    x = torch.randn(2, 3, 112, 112)  # stage maps 28 and 14: 16 and 4 windows of 7 x 7 per image
    with torch.no_grad():
        ref = m(x)
        with capture_attention(m) as w:
            out = m(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert sorted(w) == [f"layers.{i}.blocks.{j}.attn" for i in range(2) for j in range(2)]
    assert w["layers.0.blocks.0.attn"][0].shape == (2 * 16, 1, 49, 49)
    assert w["layers.1.blocks.1.attn"][0].shape == (2 * 4, 2, 49, 49)
    for maps in w.values():
        assert torch.allclose(maps[0].sum(-1), torch.ones(()), atol=1e-5)
    forbidden = shift_window_mask(28, 28, (7, 7), (3, 3)) < 0  # nW, N, N, the first stage's shifted block
    shifted = w["layers.0.blocks.1.attn"][0].view(2, 16, 1, 49, 49)
    assert forbidden.any() and shifted[:, forbidden[:, None].expand(16, 1, 49, 49)].max() < 1e-20


def test_attention_rollout_map(tmp_path):
    m = _small_vit()
    img = torch.randn(3, 64, 48)
    roll = attention_rollout(m, img)
    assert roll.shape == (64, 48) and roll.min() >= 0 and roll.max() <= 1 and math.isclose(roll.max(), 1.0)
    out = plot_attention_rollout(m, img, tmp_path / "rollout.png")
    np.testing.assert_allclose(out, roll)
    with PIL.open(tmp_path / "rollout.png") as im:
        assert im.size == (900, 450)


def test_rollout_takes_a_block_of_parallel_branches_as_one_layer():
    """ViT-S 18x2's two attention branches of a block read the same input: the block mixes tokens
    by (I + A_1 + A_2) / 3, not by (0.5 A_2 + 0.5 I)(0.5 A_1 + 0.5 I) as two layers in a row."""
    torch.manual_seed(0)
    m = visionzoo.create_model("vit_small_patch16_18x2_224", depth=2, img_size=48).eval()
    img = torch.randn(3, 48, 48)
    with torch.no_grad(), capture_attention(m) as store:
        m(img[None])
    assert sorted(store) == [f"blocks.{b}.attns.{j}.attn" for b in (0, 1) for j in (0, 1)]
    eye = torch.eye(10)  # class token + 3 x 3 patches
    rollout = {"parallel": eye, "sequential": eye}
    for b in (0, 1):
        fused = [store[f"blocks.{b}.attns.{j}.attn"][0][0].mean(0) for j in (0, 1)]
        rollout["parallel"] = (eye + fused[0] + fused[1]) / 3 @ rollout["parallel"]
        for a in fused:
            rollout["sequential"] = (0.5 * a + 0.5 * eye) @ rollout["sequential"]

    def as_map(r):
        row = F.interpolate(r[0, 1:].reshape(1, 1, 3, 3), size=(48, 48), mode="bilinear", align_corners=False)[0, 0]
        return ((row - row.min()) / (row.max() - row.min())).numpy()

    got = attention_rollout(m, img)
    np.testing.assert_allclose(got, as_map(rollout["parallel"]), atol=1e-5)
    assert np.abs(got - as_map(rollout["sequential"])).max() > 1e-3
    assert mean_attention_distance(m, img).shape == (4, 6)  # one row per branch


def test_attention_rollout_refuses_a_batch():
    """A batch of images gave the first image's map and dropped the others unsaid."""
    with pytest.raises(ValueError, match="one image, got a batch of 2"):
        attention_rollout(_small_vit(), torch.randn(2, 3, 64, 48))


def test_rollout_and_distance_leave_a_training_model_in_training():
    """Both ran the model in eval mode and left it there, so a run logging attention distance
    between steps trained on without dropout or drop path; gradcat already restored the mode."""
    m = _small_vit().train()
    attention_rollout(m, torch.randn(3, 64, 48))
    assert m.training and all(mod.training for mod in m.modules())
    mean_attention_distance(m, torch.randn(1, 3, 64, 64))
    assert m.training and all(mod.training for mod in m.modules())
    m.eval()
    attention_rollout(m, torch.randn(3, 64, 48))
    assert not any(mod.training for mod in m.modules())


def _uniform_vit():
    m = _small_vit()
    with torch.no_grad():
        for blk in m.blocks:  # zero queries: every logit 0, softmax uniform
            D = blk.attn.qkv.in_features
            blk.attn.qkv.weight[:D].zero_()
            blk.attn.qkv.bias[:D].zero_()
    return m


def test_mean_attention_distance_of_uniform_attention_is_analytic(tmp_path):
    m = _uniform_vit()
    pts = [(16 * i, 16 * j) for i in range(4) for j in range(4)]  # 64x64 input, 16-pixel patches
    analytic = sum(math.dist(p, q) for p in pts for q in pts) / len(pts) ** 2
    d = mean_attention_distance(m, torch.randn(2, 3, 64, 64))
    assert d.shape == (3, 3)
    np.testing.assert_allclose(d, analytic, rtol=1e-5)
    d2 = plot_attention_distance(m, torch.randn(1, 3, 64, 64), tmp_path / "dist.png")
    np.testing.assert_allclose(d2, analytic, rtol=1e-5)
    with PIL.open(tmp_path / "dist.png") as im:
        assert im.size == (640, 480)


def test_position_embedding_similarity(tmp_path):
    m = _small_vit()
    s = position_embedding_similarity(m)
    assert s.shape == (4, 4, 4, 4)
    np.testing.assert_allclose(s[np.arange(4)[:, None], np.arange(4), np.arange(4)[:, None], np.arange(4)], 1.0, rtol=1e-5)
    with torch.no_grad():  # a table whose row embedding is shared along rows: same row -> similarity 1
        m2 = _small_vit(pos_embed="learned_2d")
        m2.pos_embed_col.zero_()
    s2 = position_embedding_similarity(m2)
    np.testing.assert_allclose(s2[1, 2, 1], 1.0, rtol=1e-5)
    plot_position_embedding_similarity(m, tmp_path / "pe.png")
    with PIL.open(tmp_path / "pe.png") as im:
        assert im.size == (640, 640)


@pytest.mark.parametrize("H, W, M, s", [(14, 14, 7, 3), (8, 12, 4, 2), (8, 8, 4, 0), (7, 56, (7, 7), (0, 3)), (14, 4, (7, 4), (3, 0))])
def test_shift_window_regions_match_layer_mask(H, W, M, s, tmp_path):
    (Mh, Mw), (sh, sw) = (v if isinstance(v, tuple) else (v, v) for v in (M, s))
    labels = torch.from_numpy(shift_window_regions(H, W, M, s)).float()[None, :, :, None]
    win = window_partition(labels, (Mh, Mw)).squeeze(-1)  # nW, Mh*Mw
    mask = torch.where(win[:, :, None] == win[:, None, :], 0.0, -100.0)
    torch.testing.assert_close(mask, shift_window_mask(H, W, (Mh, Mw), (sh, sw)))
    masks = plot_shift_window_masks(H, W, M, s, tmp_path / "w.png")
    assert masks.shape == (H * W // (Mh * Mw), Mh * Mw, Mh * Mw)
    with PIL.open(tmp_path / "w.png") as im:
        assert im.size == (1200, 420)


@pytest.mark.parametrize("args, needle", [((14, 14, 96, 0), "not a multiple of the window"), ((14, 14, 0, 0), "at least 1 a side"),
                                          ((14, 14, 7.5, 0), "window takes an int or a pair of ints"), ((14, 14, 7, (3, 3, 3)), "shift takes an int or a pair"),
                                          ((14, 14, 7, 7), "must lie in")])
def test_shift_window_masks_and_regions_refuse_bad_arguments(args, needle):
    """shift_window_masks raised torch's reshape error for a map off the window grid and both a
    ZeroDivisionError for a window of 0; both now check as shift_window_regions did."""
    for fn in (shift_window_masks, shift_window_regions):
        with pytest.raises(ValueError, match=needle):
            fn(*args)


def test_analysis_functions_refuse_counts_that_are_not_positive_integers():
    """attention_complexity(56, 56, 96, 7.5) returned a fractional count, window=True counted as
    1, num_heads=0 passed silently, and an empty batch gave an all-NaN distance table."""
    for bad in (7.5, True, 0):
        with pytest.raises(ValueError, match="window must be a positive integer"):
            attention_complexity(56, 56, 96, bad)
    with pytest.raises(ValueError, match="block must be a positive integer"):
        nest_attention_complexity(56, 56, 96, 2.5)
    with pytest.raises(ValueError, match="num_heads must be a positive integer"):
        coatnet_attention_complexity(14, 14, 256, num_heads=0)
    with pytest.raises(ValueError, match="h, w and C must be positive integers"):
        attention_complexity(56.5, 56, 96, 7)
    assert attention_complexity(np.int64(56), 56, 96, np.int64(7)) == attention_complexity(56, 56, 96, 7)
    with pytest.raises(ValueError, match="of at least one"):
        mean_attention_distance(_small_vit(), torch.randn(0, 3, 64, 64))


def test_cli_attention_and_windows(tmp_path, capsys):
    img = tmp_path / "img.png"
    PIL.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(img)
    for what in ("rollout", "distance", "posembed"):
        out = tmp_path / f"{what}.png"
        args = ["attention", what, "vit_tiny_patch16_224", "--img-size", "64", "--output", str(out)]
        assert cli_main(args + ["--image", str(img)]) == 0, what
        with PIL.open(out) as im:
            assert im.size[0] > 100
    assert cli_main(["attention", "rollout", "vit_tiny_patch16_224", "--img-size", "64", "--output", str(tmp_path / "x.png")]) == 2
    assert "--image is required" in capsys.readouterr().err
    assert cli_main(["attention", "posembed", "convnext_tiny", "--output", str(tmp_path / "x.png")]) == 2
    assert cli_main(["windows", "--size", "14", "--window", "7", "--output", str(tmp_path / "w.png")]) == 0
    assert "4 windows, 3 with masked pairs" in capsys.readouterr().out
    # the windows a shifted Swin block takes (plan_windows): a map not a multiple of the window is
    # padded first (it was refused), a side within one window is one unshifted window of its length
    # (a 4x4 map with window 7 was refused, and along a 7-row side of a 7x56 map both axes lost their shift)
    from visionzoo.models.swin import plan_windows

    for size, width, said in [(10, 10, "window 7, shift 3 (as Swin: padded to 14x14 first): 4 windows, 3 with masked pairs"),
                              (7, 7, "window 7, shift 0 (as Swin: a side no longer than the window"),
                              (4, 4, "window 4, shift 0 (as Swin: a side no longer than the window is one window of its length, unshifted: 4x4): 1 window,"),
                              (7, 56, "window 7, shift 0x3 (as Swin: a side no longer than the window is one window of its length, unshifted: 7x7): 8 windows, 1 with"),
                              (10, 4, "window 7x4, shift 3x0 (as Swin: a side no longer than the window is one window of its length, unshifted: 7x4; padded to 14x4")]:
        png = tmp_path / f"w{size}x{width}.png"
        assert cli_main(["windows", "--size", str(size), "--width", str(width), "--window", "7", "--output", str(png)]) == 0
        assert said in capsys.readouterr().out
        plan = plan_windows(size, width, (7, 7), True, torch.device("cpu"))
        drawn = shift_window_masks(*plan.padded, plan.window, plan.shift)
        if plan.mask is not None:
            np.testing.assert_array_equal(drawn, plan.mask[:, 0].numpy())  # the model's own mask
        else:
            assert not drawn.any()
    assert cli_main(["windows", "--size", "14", "--shift", "7", "--output", str(tmp_path / "w.png")]) == 2
    assert "--shift must lie in [0, 7)" in capsys.readouterr().err
    assert cli_main(["windows", "--size", "0", "--output", str(tmp_path / "w.png")]) == 2
    assert "--size must be positive" in capsys.readouterr().err
    # rollout needs a ViT; a file that is not an image is one line
    (tmp_path / "notes.png").write_text("not an image")
    for name, image, message in [("coatnet_0_224", img, "ViT-style"), ("swin_tiny_patch4_window7_224", img, "ViT-style"),
                                 ("vit_tiny_patch16_224", tmp_path / "notes.png", "not a readable image")]:
        args = ["attention", "rollout", name, "--img-size", "224" if "swin" in name else "64", "--image", str(image), "--output", str(tmp_path / "x.png")]
        assert cli_main(args) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1] and "Traceback" not in "".join(err), err
    # an output that cannot be written, or a missing image, is refused before the model is built
    for bad, message in [(tmp_path / "nodir" / "x.png", "does not exist"), (tmp_path / "x.txt", "pictures are written as")]:
        assert cli_main(["attention", "posembed", "vit_tiny_patch16_224", "--output", str(bad)]) == 2
        assert message in capsys.readouterr().err
    assert cli_main(["attention", "rollout", "vit_tiny_patch16_224", "--image", str(tmp_path / "no.png"), "--output", str(tmp_path / "x.png")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_attention_image_is_the_models_evaluation_view(tmp_path):
    """--image is resized on its short side and centre-cropped (timm's eval view), not squashed."""
    from visionzoo.cli.analysis import _load_image, default_preprocessing
    from visionzoo.train.data import eval_transform

    wide = np.zeros((40, 120, 3), np.uint8)
    wide[:, 40:80] = 255  # a white centre third: all that the centre crop keeps
    PIL.fromarray(wide).save(tmp_path / "wide.png")
    model = _small_vit()
    x = _load_image(str(tmp_path / "wide.png"), default_preprocessing(model), required=True)
    cfg = model.default_cfg
    assert x.shape == (1, 3, 64, 64)
    white = (1 - torch.tensor(cfg["mean"])) / torch.tensor(cfg["std"])
    # the crop lies inside the white third (squashed, the left and right thirds would be black)
    torch.testing.assert_close(x[0], white[:, None, None].expand(3, 64, 64), atol=0.05, rtol=0)
    ref = eval_transform(64, cfg["mean"], cfg["std"], crop_pct=cfg["crop_pct"], interpolation=cfg["interpolation"])(PIL.open(tmp_path / "wide.png"))
    torch.testing.assert_close(x[0], ref)


@pytest.mark.parametrize("name, kw", [("deit3_small_patch16_224", dict(img_size=64)), ("vit_small_patch14_reg4_dinov2", dict(img_size=56)),
                                      ("vit_small_patch16_224", dict(img_size=64, reg_tokens=2, class_token=False, global_pool="avg"))])
def test_position_embedding_similarity_skips_only_the_prefix_rows(name, kw):
    """DeiT III's table has no rows for the prefix tokens (timm's no_embed_class), DINOv2's with
    registers one for the class token only: the function dropped num_prefix_tokens rows of every
    table and then failed to reshape the rest."""
    m = visionzoo.create_model(name, depth=1, num_classes=3, **kw)
    gh, gw = m.grid_size
    with torch.no_grad():
        m.pos_embed.normal_(generator=torch.Generator().manual_seed(0))
    patches = m.pos_embed[0, -gh * gw:].detach()  # the patch rows come last in every layout
    expect = F.normalize(patches, dim=-1) @ F.normalize(patches, dim=-1).T
    np.testing.assert_allclose(position_embedding_similarity(m), expect.reshape(gh, gw, gh, gw).numpy(), atol=1e-6)


def test_rollout_of_a_model_with_registers_and_no_class_token_averages_the_patch_rows():
    """Without a class token the map is the mean row of the patch tokens: it was register 0's row
    where registers came first (timm's *_reg*_gap_* models)."""
    torch.manual_seed(0)
    m = visionzoo.create_model("vit_small_patch16_224", reg_tokens=2, class_token=False, global_pool="avg", depth=2, img_size=48, num_classes=3).eval()
    img = torch.randn(3, 48, 48)
    with torch.no_grad(), capture_attention(m) as store:
        m(img[None])
    eye, rollout = torch.eye(11), torch.eye(11)  # 2 registers + 3 x 3 patches
    for maps in store.values():
        a = (eye + maps[0][0].mean(0)) / 2
        rollout = (a / a.sum(-1, keepdim=True)) @ rollout

    def as_map(row):
        row = F.interpolate(row.reshape(1, 1, 3, 3), size=(48, 48), mode="bilinear", align_corners=False)[0, 0]
        return ((row - row.min()) / (row.max() - row.min())).numpy()

    got = attention_rollout(m, img)
    np.testing.assert_allclose(got, as_map(rollout[2:, 2:].mean(0)), atol=1e-5)
    assert np.abs(got - as_map(rollout[0, 2:])).max() > 1e-4
