"""bench_models: the schedule of an A/B timing run (no timed assertions)."""

from __future__ import annotations

import torch
from torch import nn

from visionzoo.bench import bench_models


class Recorder(nn.Module):
    """Appends its tag to a shared log on every forward."""

    def __init__(self, tag: str, log: list[str]) -> None:
        super().__init__()
        self.tag, self.log = tag, log
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append(self.tag)
        return self.fc(x.mean((2, 3)))


def test_rounds_alternate_order_and_share_step_count():
    log: list[str] = []
    res = bench_models({"a": lambda: Recorder("a", log), "b": lambda: Recorder("b", log)}, name="rec", batch_size=2,
                       img_size=8, warmup=1, rounds=4, iters=3, min_round_s=0.0, gmacs=1.0)
    assert log[:2] == ["a", "b"]  # one warm-up step each
    timed = "".join(log[2:])
    assert timed == "aaabbb" + "bbbaaa" + "aaabbb" + "bbbaaa"  # odd rounds reversed: neither always runs first
    assert [r.impl for r in res] == ["a", "b"]
    for r in res:  # 1 GMAC per image: GFLOP/s = 2 * images/s
        assert r.images_per_s > 0 and abs(r.gflops_per_s - 2 * r.images_per_s) < 1e-6 * r.gflops_per_s


def test_fast_models_get_more_steps_per_round():
    log: list[str] = []
    bench_models({"a": lambda: Recorder("a", log)}, name="rec", batch_size=1, img_size=8, warmup=2, rounds=1, iters=1,
                 min_round_s=0.05)
    assert len(log) - 2 > 1  # a forward of a 3->2 linear takes far less than 50 ms
