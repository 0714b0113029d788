"""Shared layers: one attention for every family, window ops, position tables."""

import pytest
import timm.layers
import torch

from visionzoo.layers import (
    Attention,
    attention,
    relative_position_index,
    resample_abs_pos_embed,
    resize_rel_pos_bias_table,
    shift_window_mask,
    window_partition,
    window_reverse,
)


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
