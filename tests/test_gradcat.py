"""GradCAT (NesT's class-aware tree traversal)."""

import pytest
import torch

import visionzoo
from visionzoo.analysis import gradcat

QUADRANTS = [(0, 0), (0, 8), (8, 0), (8, 8)]  # top-left corners of the four 8x8 quadrants of 16x16
PATTERN = 2.0 * torch.tensor([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.float32)


def _images(n, g, quadrant=None):
    """Noise; class 1 images hold a plus sign in one quadrant (random, or ``quadrant``)."""
    x = 0.3 * torch.randn(n, 3, 16, 16, generator=g)
    y = torch.randint(0, 2, (n,), generator=g) if quadrant is None else torch.ones(n, dtype=torch.long)
    for b in range(n):
        if y[b]:
            q = int(torch.randint(0, 4, (1,), generator=g)) if quadrant is None else quadrant
            r = QUADRANTS[q][0] + int(torch.randint(0, 6, (1,), generator=g))
            c = QUADRANTS[q][1] + int(torch.randint(0, 6, (1,), generator=g))
            x[b, :, r : r + 3, c : c + 3] += PATTERN
    return x, y


def test_one_block_per_hierarchy_and_heatmap_of_image_size():
    torch.manual_seed(0)
    m = visionzoo.create_model("nest_tiny", num_classes=5, img_size=64)
    img = torch.randn(3, 64, 64)
    r = gradcat(m, img, 2)
    assert r.levels == [2, 1, 0] and len(r.path) == 3 and len(r.boxes) == 3
    assert r.path[0] == (0, 0)
    for (pr, pc), (cr, cc) in zip(r.path, r.path[1:]):  # each block lies inside its parent
        assert (cr // 2, cc // 2) == (pr, pc)
    assert r.boxes[0] == (0, 0, 64, 64) and r.boxes[2][2] - r.boxes[2][0] == 16
    assert [tuple(s.shape) for s in r.scores] == [(1, 1), (2, 2), (4, 4)]
    assert r.heatmap.shape == (64, 64) and 0 <= r.heatmap.min() and r.heatmap.max() <= 1
    assert r.heatmap[r.boxes[2][0], r.boxes[2][1]] > 0  # the chosen finest block lights up
    with torch.no_grad():
        assert r.logit == pytest.approx(float(m(img[None])[0, 2]), rel=1e-4)
    with pytest.raises(ValueError, match="out of range"):
        gradcat(m, img, 5)
    with pytest.raises(ValueError, match="class_index must be an integer, got 2.0"):  # (was torch's IndexError)
        gradcat(m, img, 2.0)
    with pytest.raises(TypeError, match="NesT"):
        gradcat(visionzoo.create_model("convmixer_256_8", num_classes=2), torch.randn(3, 32, 32), 0)


def test_heatmap_on_the_models_device():
    """The heat map is made where the model's scores are (a CPU map summed from a GPU model's
    scores raised a device mismatch). The default device set to meta stands in for a GPU run:
    a tensor made without ``device=`` lands on meta instead of beside the CPU scores."""
    torch.manual_seed(0)
    m = visionzoo.create_model("nest_tiny", num_classes=5, img_size=32)
    img = torch.randn(3, 32, 32)
    ref = gradcat(m, img, 2)
    with torch.device("meta"):
        r = gradcat(m, img, 2)
    assert r.heatmap.device == img.device and r.path == ref.path
    torch.testing.assert_close(r.heatmap, ref.heatmap, rtol=0, atol=0)


def test_picks_the_quadrant_that_holds_the_evidence():
    """A tiny NesT learns 'is there a plus sign'; GradCAT must find the quadrant holding it."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    # 16x16, patch 1: 4x4 blocks of 4x4 tokens, then the 2x2 quadrants, then the root
    m = visionzoo.create_model("nest_tiny_cifar", num_classes=2, img_size=16, embed_dims=(32, 32, 32), num_heads=(2, 2, 2), depths=(1, 1, 1))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.0)
    for _ in range(100):
        x, y = _images(32, g)
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    x, y = _images(128, g)
    with torch.no_grad():
        assert (m(x).argmax(1) == y).float().mean() > 0.95  # the evidence was learnt
    hits = 0
    for q, (r0, c0) in enumerate(QUADRANTS):
        x, _ = _images(6, g, quadrant=q)
        for img in x:
            hits += gradcat(m, img, 1).path[1] == (r0 // 8, c0 // 8)
    assert hits >= 18, hits  # of 24 (21 when written; swapped rows and columns give 10; chance 6)
