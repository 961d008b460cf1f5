"""The judge itself: its verdict rule, and its agreement with a second independent engine (numpy + BLAS)."""

import numpy as np

from common.numpy_forward import NumpyResNet50
from common.reference import RELATIVE_TOLERANCE, compare


def _logits(seed=0):
    return np.random.default_rng(seed).normal(0, 4, (1, 1000)).astype(np.float32)


def test_identical_logits_pass():
    x = _logits()
    v = compare(x, x)
    assert v.ok and v.max_abs_diff == 0


def test_difference_beyond_tolerance_fails():
    x = _logits()
    y = x.copy()
    tol = RELATIVE_TOLERANCE * np.abs(x).max()
    y[0, 10] += 2 * tol
    v = compare(y, x)
    assert not v.ok and "max |diff|" in v.reason
    y[0, 10] = x[0, 10] + 0.5 * tol
    assert compare(y, x).ok


def test_top1_swap_fails_even_within_tolerance():
    x = _logits()
    order = np.argsort(-x[0])
    x[0, order[1]] = x[0, order[0]] - 1e-4  # a near tie
    y = x.copy()
    y[0, order[1]] = x[0, order[0]] + 1e-4
    v = compare(y, x)
    assert not v.ok and "top-1" in v.reason


def test_top5_swap_fails_only_when_the_margin_is_clear():
    x = _logits(1)
    order = np.argsort(-x[0])
    fifth, sixth = order[4], order[5]
    tol = RELATIVE_TOLERANCE * np.abs(x).max()
    # the judge's 5th/6th margin is 1.5 x tolerance: a swap within the tolerance per logit is still wrong
    x[0, sixth] = x[0, fifth] - 1.5 * tol
    y = x.copy()
    y[0, fifth] -= 0.8 * tol
    y[0, sixth] += 0.8 * tol
    v = compare(y, x)
    assert not v.ok and "top-5" in v.reason
    # a margin inside the tolerance is a tie: the same swap is allowed
    x[0, sixth] = x[0, fifth] - 0.5 * tol
    y = x.copy()
    y[0, fifth] -= 0.4 * tol
    y[0, sixth] += 0.4 * tol
    assert compare(y, x).ok


def test_nan_and_shape_mismatch_fail():
    x = _logits()
    y = x.copy()
    y[0, 3] = np.nan
    assert not compare(y, x).ok
    assert not compare(x[:, :999], x).ok


def test_judge_agrees_with_numpy_blas_engine(store, sample_batch, judge_logits):
    batch, _ = sample_batch
    other = NumpyResNet50(store, max_batch=len(batch))(batch)
    v = compare(other, judge_logits)
    assert v.ok, v
    assert v.max_abs_diff < 1e-4 * np.abs(judge_logits).max()
