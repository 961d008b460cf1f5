"""Stage 01's ops on small cases whose answers are worked out here, by hand or by a different method."""

import numpy as np
import pytest

from common import stages

ops = stages.load("01")


def f32(a):
    return np.asarray(a, dtype=np.float32)


def test_conv_3x3_pad1_stride1_sums_neighbourhoods():
    x = f32(np.arange(16).reshape(1, 1, 4, 4))
    w = np.ones((1, 1, 3, 3), np.float32)
    y = ops.conv2d(x, w, 1, 1)
    # corner (0,0) sees 0,1,4,5; an inner pixel (1,1) sees the 3x3 block 0..10
    assert y.shape == (1, 1, 4, 4)
    assert y[0, 0, 0, 0] == 0 + 1 + 4 + 5
    assert y[0, 0, 1, 1] == sum([0, 1, 2, 4, 5, 6, 8, 9, 10])
    assert y[0, 0, 3, 3] == 10 + 11 + 14 + 15


def test_conv_stride2_pad1_picks_every_other_window():
    x = f32(np.arange(25).reshape(1, 1, 5, 5))
    w = np.zeros((1, 1, 3, 3), np.float32)
    w[0, 0, 1, 1] = 1.0  # centre tap: the conv samples the input at (2i, 2j)
    y = ops.conv2d(x, w, 2, 1)
    assert y.shape == (1, 1, 3, 3)
    assert (y[0, 0] == x[0, 0, ::2, ::2]).all()


def test_conv_1x1_mixes_channels_as_a_matrix_product():
    rng = np.random.default_rng(0)
    x = f32(rng.normal(size=(2, 5, 3, 4)))
    w = f32(rng.normal(size=(7, 5, 1, 1)))
    expected = np.einsum("oc,nchw->nohw", w[:, :, 0, 0].astype(np.float64), x.astype(np.float64))
    np.testing.assert_allclose(ops.conv2d(x, w, 1, 0), expected, rtol=1e-5, atol=1e-5)


def _direct_conv(x, w, stride, pad):
    """The definition, in float64 with explicit zero padding: a different method from the kernel's bounds test."""
    n, c, h, wd = x.shape
    co, _, k, _ = w.shape
    xp = np.zeros((n, c, h + 2 * pad, wd + 2 * pad))
    xp[:, :, pad : pad + h, pad : pad + wd] = x
    ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    y = np.zeros((n, co, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * stride : i * stride + k, j * stride : j * stride + k]
            y[:, :, i, j] = np.einsum("nckl,ockl->no", patch, w)
    return y


@pytest.mark.parametrize(("k", "stride", "pad"), [(3, 1, 1), (3, 2, 1), (7, 2, 3), (1, 2, 0)])
def test_conv_matches_the_definition(k, stride, pad):
    rng = np.random.default_rng(k * 10 + stride)
    x = f32(rng.normal(size=(1, 3, 9, 9)))
    w = f32(rng.normal(size=(4, 3, k, k)))
    np.testing.assert_allclose(ops.conv2d(x, w, stride, pad), _direct_conv(x, w, stride, pad), rtol=1e-4, atol=1e-4)


def test_maxpool_with_padding_ignores_the_border():
    x = -f32(np.arange(16).reshape(1, 1, 4, 4)) - 1  # all negative: a zero border would win if padding counted
    y = ops.maxpool(x, 3, 2, 1)
    assert y.shape == (1, 1, 2, 2)
    # x[i, j] = -(4i + j) - 1 decreases right and down, so each window's best is its top-left valid
    # pixel: windows start at rows/cols -1 and 1 -> valid top-left (0, 0), (0, 1), (1, 0), (1, 1)
    assert y[0, 0].tolist() == [[-1.0, -2.0], [-5.0, -6.0]]


def test_batchnorm_formula():
    x = f32([[[[1.0, 2.0]], [[3.0, 5.0]]]])  # (1, 2, 1, 2)
    gamma, beta, mean, var = f32([2, 0.5]), f32([1, -1]), f32([1, 3]), f32([4, 0.25])
    y = ops.batchnorm(x, gamma, beta, mean, var, np.float32(0.0))
    # channel 0: (x - 1) / 2 * 2 + 1 = x; channel 1: (x - 3) / 0.5 * 0.5 - 1 = x - 4
    np.testing.assert_allclose(y, [[[[1.0, 2.0]], [[-1.0, 1.0]]]], rtol=1e-6)


def test_relu_add_avgpool_fc():
    a = f32([[[[-1.0, 2.0], [0.0, -3.5]]]])
    assert ops.relu(a).tolist() == [[[[0.0, 2.0], [0.0, 0.0]]]]
    assert ops.add(a, a).tolist() == [[[[-2.0, 4.0], [0.0, -7.0]]]]
    assert ops.avgpool(f32(np.arange(8).reshape(1, 2, 2, 2))).tolist() == [[1.5, 5.5]]
    x = f32([[1.0, 2.0, 3.0]])
    w = f32([[1, 0, 0], [0, 1, 1]])
    b = f32([10, 20])
    assert ops.fc(x, w, b).tolist() == [[11.0, 25.0]]
