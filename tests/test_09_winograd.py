"""Stage 09's claims: the F(4x4, 3x3) and F(2x2, 3x3) matrices compute a 3x3 correlation exactly (in exact
arithmetic); every 3x3 stride-1 layer shape of ResNet-50, and edge tiles that are not multiples of the tile, in
either form and with a residual, match ONNX Runtime's Conv; the net matches the judge at batch 8."""

import re

import numpy as np
import pytest
from numba import njit, prange

from common import spec, stages
from common.errors import LadderError
from common.reference import compare, conv_reference
from tests.test_07_fused import stored


@pytest.fixture(scope="module")
def s09():
    return stages.load("09")


@pytest.mark.parametrize("form", ["F4", "F2"])
def test_the_matrices_are_a_minimal_filtering_algorithm(s09, form):
    """1-D: A^T [(G g) * (B^T d)] is the correlation of out + 2 inputs with 3 taps; 2-D nests it. In float64."""
    f = getattr(s09, form)
    bt, g_, at = (np.array(m, np.float64) for m in (f.bt, f.g, f.at))
    assert bt.shape == (f.points, f.points) and g_.shape == (f.points, 3) and at.shape == (f.out, f.points)
    rng = np.random.default_rng(0)
    for _ in range(10):
        d, g = rng.standard_normal(f.points), rng.standard_normal(3)
        want = np.array([d[i : i + 3] @ g for i in range(f.out)])
        np.testing.assert_allclose(at @ ((g_ @ g) * (bt @ d)), want, atol=1e-12)
        d2, g2 = rng.standard_normal((f.points, f.points)), rng.standard_normal((3, 3))
        want2 = np.array([[np.sum(d2[i : i + 3, j : j + 3] * g2) for j in range(f.out)] for i in range(f.out)])
        np.testing.assert_allclose(at @ ((g_ @ g2 @ g_.T) * (bt @ d2 @ bt.T)) @ at.T, want2, atol=1e-11)


SHARED: dict = {}  # the micro-kernel with the plain store, compiled once for every layer tested


def run_layer(s09, step: spec.Step, x, w, bias, res, threads: int = 1):
    """The three generated kernels of one Winograd conv on (n, C, H, W) x, as the stage stores tensors."""
    import numba

    c = step.conv
    if not SHARED:
        SHARED.update({"np": np, "njit": njit, "prange": prange, "fma_tile": s09.fma_tile})
        SHARED.update({name: np.float32(k) for k, name in s09.NUMBERS.items()})
        shared = s09.tile_source(None)  # the sums stored as they are
        exec(shared, SHARED)
    namespace = dict(SHARED, winograd_ir=s09.winograd_ir)
    f = s09.winograd_form(c)
    vector_code = s09.transform_source(f, "in") + s09.transform_source(f, "out", step)
    source = "\n\n".join(
        [vector_code, s09.winograd_in_source(step), s09.winograd_gemm_source(step), s09.winograd_out_source(step)]
    )
    exec(source.replace("cache=True", "cache=False"), namespace)
    kin, kgemm, kout = (namespace[s09.winograd_name(p, step)] for p in ["in", "gemm", "out"])
    n = x.shape[0]
    xs = stored(s09, step.src, x)
    per_image, padded = s09.winograd_shapes(c)
    scratch = np.full(f.points**2 * per_image * n * (c.cin + padded), np.nan, np.float32)
    edge = s09.border(step.dst)
    out_rows, out_width = s09.layout(step.dst)
    y = np.zeros((n, out_rows, out_width), np.float32)
    numba.set_num_threads(threads)
    more = [np.ascontiguousarray(res.transpose(0, 2, 3, 1)).reshape(n, c.h_out, -1)] if step.residual else []
    kin(xs, scratch)
    kgemm(s09.winograd_panels(w, f), scratch, n)
    kout(scratch, bias, y, *more, n)
    inside = y[:, edge : edge + c.h_out, edge * c.cout : (edge + c.w_out) * c.cout]
    outside = y.copy()
    outside[:, edge : edge + c.h_out, edge * c.cout : (edge + c.w_out) * c.cout] = 0
    return inside.reshape(n, c.h_out, c.w_out, c.cout).transpose(0, 3, 1, 2), outside


def layer_error(s09, step: spec.Step, n: int = 1, threads: int = 1) -> float:
    c = step.conv
    rng = np.random.default_rng(5)
    x = np.abs(rng.standard_normal((n, c.cin, c.h_in, c.w_in))).astype(np.float32)  # a ReLU output
    w = (rng.standard_normal((c.cout, c.cin, 3, 3)) / np.sqrt(9 * c.cin)).astype(np.float32)
    bias = rng.standard_normal(c.cout).astype(np.float32)
    res = rng.standard_normal((n, c.cout, c.h_out, c.w_out)).astype(np.float32)
    want = conv_reference(x, w, 1, 1) + bias[None, :, None, None] + (res if step.residual else 0)
    want = np.maximum(want, 0) if step.relu else want
    got, outside = run_layer(s09, step, x, w, bias, res, threads)
    assert not outside.any(), "written outside the layer (its border or the room for whole tiles)"
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("layer", ["layer1.0.conv2", "layer2.1.conv2", "layer3.1.conv2", "layer4.1.conv2"])
def test_every_3x3_layer_shape_matches_onnxruntime(s09, layer):
    """ResNet-50's 3x3 stride-1 shapes, layer4's in F(2x2), the others in F(4x4) (none of them takes a residual:
    its 1x1 convs do; the edge-tile test below runs the output transform with a residual)."""
    c = spec.STEP_BY_NAME[layer].conv
    assert s09.winograd_form(c) is (s09.F2 if c.h_out == 7 else s09.F4)
    error = layer_error(s09, spec.STEP_BY_NAME[layer])
    assert error <= 1e-4, (layer, error)  # relative to the largest output; F(4x4) in float32


@pytest.mark.parametrize(
    "form, hw, cin, cout", [("F4", 13, 5, 70), ("F4", 7, 16, 13), ("F4", 6, 3, 64), ("F2", 13, 5, 70)]
)
def test_edge_tiles_that_are_not_multiples_of_the_tile_are_exact(s09, monkeypatch, form, hw, cin, cout):
    """F(4x4) on 13x13 (4 tiles of 4, the last 1 wide), 7x7 (2, the last 3), 6x6; F(2x2) on 13x13 (7 tiles of
    2, the last 1 wide); channels that leave a short panel; 2 images; on 2 threads."""
    c = spec.Conv("odd", "odd_bn", cin, cout, 3, 1, 1, hw, hw)
    step = spec.Step("odd_out", "conv", "odd_in", (cout, hw, hw), c, "odd_res", True)
    shapes = {"odd_in": (cin, hw, hw), "odd_out": (cout, hw, hw), "odd_res": (cout, hw, hw)}
    monkeypatch.setattr(s09, "chw", lambda t: shapes[t])
    monkeypatch.setattr(s09, "readers", lambda t: [step] if t == "odd_in" else [])
    monkeypatch.setattr(s09, "border", lambda t: {"odd_in": 1, "odd_out": 1}.get(t, 0))
    f = getattr(s09, form)
    monkeypatch.setattr(s09, "winograd_form", lambda conv, sizes=s09.SIZES: f)  # the form, whatever the shape
    assert layer_error(s09, step, n=2, threads=2) <= 1e-4


def test_a_batch_of_8_matches_the_judge(s09, store, sample_batch, judge_logits):
    batch, _ = sample_batch
    pick = [i % len(batch) for i in range(8)]
    logits = s09.ResNet50(store, max_batch=8, threads=2)(np.ascontiguousarray(batch[pick]))
    for row, i in enumerate(pick):
        verdict = compare(logits[row], judge_logits[i])
        assert verdict.ok, f"09 at batch 8, image {row}: {verdict}"


@pytest.mark.parametrize("whole_batch_from", [None, "layer2.0.downsample.0"])
def test_a_batch_run_image_by_image_at_first_gives_the_same_logits(s09, whole_batch_from, store, sample_batch):
    """Image by image up to layer3 (the stage's default) against the whole batch through every step and against
    a split at layer2: every image's sums are made in the same order, so the logits are the same floats. Batch 3
    of 4 planned, on 2 threads; a wrong place for a tensor that crosses the split would mix up images."""
    batch, _ = sample_batch
    x = np.ascontiguousarray(batch[[2, 0, 1]])
    want = s09.ResNet50(store, max_batch=4, threads=2)(x)
    got = s09.ResNet50(store, max_batch=4, threads=2, whole_batch_from=whole_batch_from)(x)
    np.testing.assert_array_equal(got, want)
    alone = s09.ResNet50(store, max_batch=1, threads=2)(x[1:2])  # and each image as if it were alone
    np.testing.assert_array_equal(got[1], alone[0])


def test_a_step_that_does_not_exist_is_named_in_one_line(s09, store):
    with pytest.raises(LadderError, match=re.escape("no step 'layer9.0.conv1'")):
        s09.ResNet50(store, max_batch=2, whole_batch_from="layer9.0.conv1")
