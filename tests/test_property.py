"""Random sizes, channel counts and batch sizes: a model works or says clearly why not."""

import functools

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import visionzoo
from visionzoo import InputError

from family_models import smallest_per_family

FAMILIES = sorted(smallest_per_family())


@functools.lru_cache(maxsize=None)
def _model(family: str, in_chans: int):
    return visionzoo.create_model(smallest_per_family()[family], num_classes=3, in_chans=in_chans).eval()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    family=st.sampled_from(FAMILIES),
    model_chans=st.sampled_from([1, 3, 4]),
    x_chans=st.sampled_from([1, 3, 4]),
    batch=st.integers(1, 3),
    h=st.integers(1, 96),
    w=st.integers(1, 96),
    dtype=st.sampled_from([torch.float32, torch.float32, torch.float64, torch.int64]),
)
def test_forward_works_or_raises_input_error(family, model_chans, x_chans, batch, h, w, dtype):
    model = _model(family, model_chans).to(torch.float64 if dtype == torch.float64 else torch.float32)
    x = torch.randn(batch, x_chans, h, w).to(dtype) if dtype.is_floating_point else torch.randint(0, 255, (batch, x_chans, h, w))
    try:
        with torch.no_grad():
            y = model(x)
    except InputError as e:
        msg = str(e)
        assert "got" in msg and "expects" in msg or "needs" in msg, msg
        return
    assert x_chans == model_chans and dtype.is_floating_point
    assert y.shape == (batch, 3) and torch.isfinite(y).all()
