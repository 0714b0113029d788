"""Receptive fields of stacks of dilated convolutions, and the gridding problem.

A k x k convolution with dilation r reads the input at offsets r * (0, 1, ..., k-1) in
each axis. Stacking such layers, the number of paths from an input pixel to one output
pixel (the "count map") is the convolution of the layers' sparse kernels; with all-ones
weights it is exactly the gradient of the output pixel with respect to the input.
Because a k x k all-ones kernel is the outer product of two 1-D kernels, the 2-D map is
the outer product of the 1-D count vector with itself, and it depends only on the
multiset of rates, not on their order.

*Gridding* (Wang et al., "Understanding Convolution for Semantic Segmentation", WACV
2018) is a map with zeros inside its bounding square: input pixels the output never
sees. With the rates sorted ascending, the 1-D footprint stays one solid interval if and
only if every rate is at most the width of the footprint below it,

    r_(1) <= 1,   r_(i) <= 1 + (k - 1) * (r_(1) + ... + r_(i-1)),

because a hole at the first gap can only be filled by a step shorter than the gap's
position, and later (larger) rates never are. :func:`hdc_check` reports the exact count
of holes and also the paper's Hybrid Dilated Convolution test (M_2 <= K).
"""

from __future__ import annotations

from collections.abc import Sequence
from math import gcd
from typing import Any

import numpy as np

__all__ = ["hdc_check", "receptive_field", "receptive_field_1d", "suggest_rates"]


def _whole(v: object) -> bool:
    """Whether ``v`` is an integer (numpy's too, or a float with no fraction), not a bool."""
    return not isinstance(v, (bool, np.bool_)) and isinstance(v, (int, np.integer, float, np.floating)) and float(v).is_integer()


def _check(rates: Sequence[int], kernel_size: int) -> list[int]:
    rates = list(rates)
    if not rates:
        raise ValueError("rates must name at least one layer")
    if not all(_whole(r) and r >= 1 for r in rates):
        raise ValueError(f"dilation rates must be positive integers, got {rates}")
    rates = [int(r) for r in rates]
    if isinstance(kernel_size, (bool, np.bool_)) or not isinstance(kernel_size, (int, np.integer)) or kernel_size < 1:
        raise ValueError(f"kernel_size must be a positive integer, got {kernel_size!r}")
    return rates


#: the most cells :func:`receptive_field_1d` / :func:`receptive_field` build, and the most taps
#: :func:`hdc_check` follows (64 Mi: 512 MiB of int64 counts)
MAX_CELLS = 1 << 26


def _footprint(rates: list[int], kernel_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The 1-D count vector kept sparse: the offsets that are reached, ascending, and their path
    counts. Work and memory grow with the number of offsets reached (at most k^n and the span),
    not with the span, so a stack of very large rates costs what a small one does."""
    offsets, counts = np.zeros(1, dtype=np.int64), np.ones(1, dtype=np.int64)
    taps = np.arange(kernel_size, dtype=np.int64)
    for r in rates:
        if offsets.size * kernel_size > MAX_CELLS:
            raise ValueError(f"rates {rates} with {kernel_size}x{kernel_size} kernels reach more than {MAX_CELLS} offsets per axis: too many to follow")
        reached = (offsets[:, None] + r * taps).ravel()
        offsets, where = np.unique(reached, return_inverse=True)
        summed = np.zeros(offsets.size, dtype=np.int64)
        np.add.at(summed, where.ravel(), np.repeat(counts, kernel_size))
        counts = summed
    return offsets, counts


def _span(rates: list[int], kernel_size: int) -> int:
    return 1 + (kernel_size - 1) * sum(rates)


def _dense_limit(cells: int, span: int) -> None:
    if cells > MAX_CELLS:
        raise ValueError(f"the receptive field spans {span} pixels a side: {cells} cells is more than this builds "
                         f"({MAX_CELLS}); hdc_check counts its holes at any size")


def _dense_1d(rates: list[int], kernel_size: int, span: int) -> np.ndarray:
    """:func:`receptive_field_1d` of checked ``rates`` whose ``span`` is known."""
    offsets, counts = _footprint(rates, kernel_size)
    out = np.zeros(span, dtype=np.int64)
    out[offsets] = counts
    return out


def receptive_field_1d(rates: Sequence[int], kernel_size: int = 3) -> np.ndarray:
    """Path counts along one axis: a vector of length 1 + (k - 1) * sum(rates)."""
    rates = _check(rates, kernel_size)
    span = _span(rates, kernel_size)
    _dense_limit(span, span)
    return _dense_1d(rates, kernel_size, span)


def receptive_field(rates: Sequence[int], kernel_size: int = 3, size: int | None = None) -> np.ndarray:
    """How many times each input pixel feeds the centre output pixel of a dilated stack.

    Args:
        rates: dilation rate of each k x k convolution, bottom (input side) to top.
        kernel_size: k, the same for every layer.
        size: side of the returned map; the receptive field (side
            1 + (k - 1) * sum(rates)) is centred in it, zeros around. Default: the RF side.

    Returns:
        (size, size) integer array; entry [i, j] is the number of paths from input
        pixel (i, j) to the output pixel (the gradient of the output with all-ones weights).
    """
    rates = _check(rates, kernel_size)
    span = _span(rates, kernel_size)
    if size is not None and not _whole(size):
        raise ValueError(f"size must be a whole number, got {size!r}")
    if size is not None and size < span:
        raise ValueError(f"size {size} is smaller than the receptive field ({span})")
    side = span if size is None else int(size)
    _dense_limit(side * side, span)
    c = _dense_1d(rates, kernel_size, span)
    before = (side - span) // 2
    return np.pad(np.outer(c, c), (before, side - span - before))


def _hdc_m(rates: Sequence[int]) -> list[int]:
    """Wang et al.'s maximum distance between non-zero taps, M_1 ... M_n (M_n = r_n)."""
    m = [0] * len(rates)
    m[-1] = rates[-1]
    for i in range(len(rates) - 2, -1, -1):
        nxt, r = m[i + 1], rates[i]
        m[i] = max(nxt - 2 * r, nxt - 2 * (nxt - r), r)
    return m


def _period(rates: Sequence[int]) -> int:
    """Length of the shortest group (of two or more layers) that ``rates`` repeats, else len(rates)."""
    n = len(rates)
    rates = list(rates)
    return next((p for p in range(2, n // 2 + 1) if n % p == 0 and rates == rates[:p] * (n // p)), n)


def _hole_free(sorted_rates: Sequence[int], kernel_size: int) -> bool:
    width = 1
    for r in sorted_rates:
        if r > width:
            return False
        width += (kernel_size - 1) * r
    return True


def suggest_rates(rates: Sequence[int], kernel_size: int = 3) -> list[int]:
    """A gridding-free rate pattern with the same receptive-field span.

    The rule: if ``rates`` repeats a group (``[2, 4, 6, 2, 4, 6]``), work on one group
    and repeat the answer, so the result is a sawtooth as in Wang et al.'s HDC. For a
    group of n rates with sum S (span 1 + (k-1) S), pick n ascending rates with the same
    sum that start at 1 and satisfy the hole-free condition of this module; among them
    the one with the smallest top rate, then the most even steps. The answer also passes
    the paper's test M_2 <= K when one exists. When no n rates can reach S
    (the largest hole-free sum is (k^n - 1) / (k - 1)), a layer is added.
    For k = 1 every pattern is hole-free and ``rates`` is returned. The search stops after
    ``SEARCH_BUDGET`` candidate rates (large sums, e.g. S in the hundreds): the best pattern
    found by then, or the greedy one (each rate the even share of what is left, capped by
    the hole-free width), which is hole-free but may be less even.

    Examples (k = 3): [2, 4, 6] -> [1, 3, 8]; [2, 2, 2] -> [1, 2, 3]; [3, 3] -> [1, 2, 3];
    [2, 4, 6, 2, 4, 6] -> [1, 3, 8, 1, 3, 8].
    """
    rates = _check(rates, kernel_size)
    if kernel_size == 1:
        return rates
    n = len(rates)
    period = _period(rates)
    group = rates[:period]
    total = sum(group)
    k = kernel_size
    m = len(group)
    while (k**m - 1) // (k - 1) < total:
        m += 1
    best: tuple[Any, ...] | None = None
    visits = 0

    def search(prefix: list[int], width: int, remaining: int, left: int) -> None:
        nonlocal best, visits
        if left == 0:
            if remaining == 0:
                seq = list(prefix)
                hdc_ok = m == 1 or _hdc_m(seq)[1] <= k  # the rates start at 1: no common factor
                key = (not hdc_ok, seq[-1], sum(x * x for x in seq), seq)
                if best is None or key < best:
                    best = key
            return
        lo = prefix[-1] if prefix else 1
        hi = min(width, remaining - lo * (left - 1))  # leave room for the layers above
        if best is not None and not best[0]:  # a solution passing HDC caps the top rate
            hi = min(hi, best[1])
        for r in range(lo, hi + 1):
            visits += 1  # every candidate rate counts, also those the bound below rejects
            if visits > SEARCH_BUDGET:
                raise _OutOfBudget
            # the most the layers above can add: each at most the growing width
            w, s = width + (k - 1) * r, r
            for _ in range(left - 1):
                s += w
                w += (k - 1) * w
            if s < remaining:
                continue
            prefix.append(r)
            search(prefix, width + (k - 1) * r, remaining - r, left - 1)
            prefix.pop()

    try:
        search([], 1, total, m)
    except _OutOfBudget:
        if best is None:
            return _greedy_rates(total, m, k) * (n // period)
    assert best is not None  # m was chosen so that a solution exists
    return best[3] * (n // period)


#: candidate rates :func:`suggest_rates` considers (at every layer, also those the bound rejects)
#: before it settles: under a second on a 2-core Zen 4 for any rates
SEARCH_BUDGET = 5000000


class _OutOfBudget(Exception):
    pass


def _greedy_rates(total: int, m: int, k: int) -> list[int]:
    """m ascending hole-free rates summing to ``total``: each the even share of what is left
    (rounded down, so the shares never fall), capped by the width the layers below reach;
    a layer is added where the caps leave too much for the last one."""
    while True:
        rates, width, left = [], 1, total
        for i in range(m):
            r = left if i == m - 1 else max(rates[-1] if rates else 1, min(width, left // (m - i)))
            rates.append(r)
            left -= r
            width += (k - 1) * r
        if left == 0 and _hole_free(rates, k) and rates == sorted(rates):
            return rates
        m += 1


def hdc_check(rates: Sequence[int], kernel_size: int = 3) -> dict[str, Any]:
    """Gridding diagnosis of a stack of dilated k x k convolutions.

    Returns:
        dict with
        ``gridding``: the receptive field has holes (zero cells inside its square);
        ``holes``: how many cells of the square are zero;
        ``span``: side of the square, 1 + (k - 1) * sum(rates);
        ``M``: Wang et al.'s sequence M_i = max(M_{i+1} - 2 r_i, M_{i+1} - 2 (M_{i+1} - r_i), r_i),
        M_n = r_n, listed M_1 ... M_n over one group: the paper applies HDC to each
        group of a repeated pattern, so for ``[1, 2, 5, 1, 2, 5]`` the group is ``[1, 2, 5]``;
        ``hdc_ok``: the paper's rule for that group: M_2 <= K and no common factor > 1
        (for a one-layer group: r_1 == 1); with K == 1 (one pixel read whatever the rates)
        it holds. The rule does not look at r_1, and
        the paper's groups start at rate 1: ``[2, 3]`` passes it and grids (40 holes), so
        ``gridding`` (counted) is the answer to trust;
        ``common_factor``: the greatest common factor of the rates when it is > 1 (which
        always grids with K > 1), else ``None``;
        ``suggestion``: :func:`suggest_rates` when gridding, else ``None``.
    """
    rates = _check(rates, kernel_size)
    span = _span(rates, kernel_size)
    solid = len(_footprint(rates, kernel_size)[0])  # offsets reached along one axis
    holes = span * span - solid * solid  # the 2-D map is the outer product of the 1-D counts
    group = rates[: _period(rates)]
    m = _hdc_m(group)
    g = 0
    for r in rates:
        g = gcd(g, r)
    if kernel_size == 1:  # 1x1 kernels read one pixel whatever their rates: nothing to grid
        g, hdc_ok = 1, True
    else:
        hdc_ok = ((m[1] <= kernel_size) if len(group) > 1 else group[0] == 1) and g == 1
    return {
        "gridding": holes > 0,
        "holes": holes,
        "span": span,
        "M": m,
        "hdc_ok": hdc_ok,
        "common_factor": g if g > 1 else None,
        "suggestion": suggest_rates(rates, kernel_size) if holes > 0 else None,
    }
