"""Stage 08's claims: the conv is an outer-product register tile (packed FMAs with a broadcast operand, no
stack spills in its loop); the weights are packed losslessly; convs whose channels and pixels do not divide
into tiles are exact against ONNX Runtime's Conv; the whole net matches the judge at 1 and 2 threads and at
batch 1, 3 and 8."""

import re

import numpy as np
import pytest

from common import fma_tile, isa, spec, stages
from common.reference import compare
from tests.asm import PACKED_FMA
from tests.processes import last_json, run_python
from tests.source import parallel_regions_per_image


@pytest.fixture(scope="module")
def s08():
    return stages.load("08")


def hot_loop(asm: str) -> list[str]:
    """The innermost loop around the first packed FMA: from the label its backward jump goes to, to that jump."""
    lines = asm.splitlines()
    first = next(i for i, line in enumerate(lines) if PACKED_FMA.search(line))
    for start in range(first, -1, -1):
        label = re.match(r"^(\.\w+):", lines[start])
        if label:
            back = re.compile(rf"\bj\w+\s+{re.escape(label.group(1))}$")
            ends = [i for i in range(first, len(lines)) if back.search(lines[i])]
            if ends:
                return lines[start : ends[0] + 1]
    raise AssertionError("no loop around the FMAs")


def test_the_tile_is_packed_fmas_on_broadcast_inputs_with_nothing_spilled(s08):
    from numba import njit

    target = isa.target()
    if target.arch not in isa.X86:
        pytest.skip(f"reads x86 assembly; numba compiles for {target.arch} here (the tile is still judged)")
    register = {16: "zmm", 8: "ymm", 4: "xmm"}[target.vector_floats]  # the target's own vectors
    namespace = {"fma_tile": fma_tile}
    step = spec.STEP_BY_NAME["layer1.0.conv3"]  # the epilogue with the most in it: + bias, + residual, ReLU
    rng = np.random.default_rng(0)
    panel = s08.PANEL
    exec(s08.tile_source(step), namespace)
    micro_kernel = namespace[s08.tile_name(step)]

    @njit
    def tile(x, at, window, w, bias, y, res):  # the intrinsic inlined into a function, as in a conv kernel
        micro_kernel(x, at, window, w, bias, y, res)

    k, pixels, channels = 32, s08.PIXELS, 2 * panel  # two panels: the tile computes the second
    x = rng.standard_normal(pixels * k).astype(np.float32)
    at = np.zeros((3, pixels), np.int64)
    at[0] = np.arange(pixels) * k
    at[1], at[2] = np.arange(pixels) * channels + panel, np.arange(pixels)[::-1] * channels + panel  # the second panel
    w = rng.standard_normal((2, k, panel)).astype(np.float32)
    bias = rng.standard_normal(channels).astype(np.float32)
    res = rng.standard_normal(pixels * channels).astype(np.float32)
    y = np.full(pixels * channels, np.nan, np.float32)
    tile(x, at, np.array([1, 0, k]), w[1], bias[panel:], y, res)
    # It computes the GEMM and the epilogue, into the second panel's channels of each pixel and nowhere else.
    want = x.reshape(pixels, k) @ w[1] + bias[panel:] + res.reshape(pixels, channels)[::-1, panel:]
    np.testing.assert_allclose(y.reshape(pixels, channels)[:, panel:], np.maximum(want, 0), rtol=1e-5, atol=1e-5)
    assert np.isnan(y.reshape(pixels, channels)[:, :panel]).all()
    if not target.fma:
        pytest.skip(f"{target.describe()}: no FMA instruction to look for (the tile's numbers were checked)")
    asm = tile.inspect_asm(tile.signatures[0])
    loop = hot_loop(asm)
    fmas = [line for line in loop if PACKED_FMA.search(line)]
    # AVX-512: 6 x 4 on zmm; AVX2: 5 x 2 on ymm; each a whole vector register of the target.
    assert len(fmas) == s08.PIXELS * s08.VECTORS and all(register in f for f in fmas), fmas
    broadcasts = [line for line in loop if "vbroadcastss" in line or re.search(r"\{1to\d+\}", line)]
    assert len(broadcasts) == s08.PIXELS, broadcasts  # each pixel's input float, once per step
    assert not [line for line in loop if "(%rsp)" in line], "accumulators spilled to the stack"
    # The epilogue is vector code too: a packed store per accumulator, no scalar store.
    stores = re.findall(rf"vmovups\s+%{register}\d+, [^\n]*\(%r", asm)
    assert len(stores) >= s08.PIXELS * s08.VECTORS and "vmovss\t%xmm" not in asm


def test_packed_weights_round_trip_to_the_originals(s08):
    rng = np.random.default_rng(1)
    for co, ci, k in [(64, 3, 7), (130, 5, 3), (7, 16, 1)]:
        w = rng.standard_normal((co, ci, k, k)).astype(np.float32)
        packed = s08.panels(w)
        assert packed.shape == (-(-co // s08.PANEL), k * k * ci, s08.PANEL)
        # Unpack by the layout's definition: panel p, row (kh, kw, c), lane l is w[PANEL * p + l, c, kh, kw].
        out = packed.transpose(0, 2, 1).reshape(-1, k, k, ci)[:co].transpose(0, 3, 1, 2)
        np.testing.assert_array_equal(out, w)
        assert not packed.transpose(0, 2, 1).reshape(-1, k * k * ci)[co:].any()  # the short panel's fill is zero


# Runs in a child process with a pool of 3 threads (1, 2 and 3 used): conv shapes ResNet-50 does not have,
# generated as the stage generates its own, against ONNX Runtime's Conv (+ bias, + residual, ReLU).
ODD_TILES = r"""
import json, sys
import numba, numpy as np
from numba import njit, prange
from common import fma_tile, isa, spec, stages
from common.reference import conv_reference

s = stages.load("08")
shapes = {}
s.chw = lambda t: shapes[t]  # the odd tensors' shapes, where the stage would look in spec
s.border = lambda t: borders.get(t, 0)
rng = np.random.default_rng(7)
report = {}
cases = [(5, 7, 3, 2, 1, 9, False, False), (8, 130, 1, 1, 0, 5, True, True)]
for cin, cout, k, stride, pad, hw, residual, relu in cases:
    c = spec.Conv("odd", "odd_bn", cin, cout, k, stride, pad, hw, hw)
    step = spec.Step("odd_out", "conv", "odd_in", (cout, c.h_out, c.w_out), c, "odd_res" if residual else None, relu)
    shapes.update(odd_in=(cin, hw, hw), odd_out=(cout, c.h_out, c.w_out), odd_res=(cout, c.h_out, c.w_out))
    borders = {"odd_in": pad, "odd_out": 1}  # the output stored with a border, as for a 3x3 reader
    source = "\n\n".join([*(s.tile_source(step, n) for n in s.stored_channels(c)),
                          s.conv_source(step, ["odd"])]).replace("cache=True", "cache=False")
    namespace = {"np": np, "njit": njit, "prange": prange, "fma_tile": fma_tile}
    exec(source, namespace)
    kernel = namespace[s.kernel_name(step)]
    n = 2
    x = rng.standard_normal((n, cin, hw, hw)).astype(np.float32)
    w = rng.standard_normal((cout, cin, k, k)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    res = rng.standard_normal((n, cout, c.h_out, c.w_out)).astype(np.float32)
    want = conv_reference(x, w, stride, pad) + bias[None, :, None, None] + (res if residual else 0)
    want = np.maximum(want, 0) if relu else want
    xs = np.zeros((n, hw + 2 * pad, (hw + 2 * pad) * cin), np.float32)
    xs[:, pad : pad + hw, pad * cin : (pad + hw) * cin] = x.transpose(0, 2, 3, 1).reshape(n, hw, hw * cin)
    args = [xs, s.panels(w), bias]
    for threads in (1, 2, 3):
        numba.set_num_threads(threads)
        y = np.full((n, c.h_out + 2, (c.w_out + 2) * cout), np.nan, np.float32)
        y[:, 0], y[:, -1], y[:, :, :cout], y[:, :, -cout:] = 0, 0, 0, 0  # the border, as the arena keeps it
        more = [res.transpose(0, 2, 3, 1).reshape(n, c.h_out, -1).copy()] if residual else []
        kernel(*args, y, *more)
        inside = y[:, 1:-1, cout:-cout].reshape(n, c.h_out, c.w_out, cout).transpose(0, 3, 1, 2)
        error = float(np.abs(inside - want).max()) / float(np.abs(want).max())
        border_written = bool(y[:, 0].any() or y[:, -1].any() or y[:, :, :cout].any() or y[:, :, -cout:].any())
        report[f"{cin}->{cout} k{k} s{stride} {hw}x{hw} res={residual} relu={relu} threads={threads}"] = (
            error, border_written)
print(json.dumps(report))
"""


def test_tiles_that_do_not_divide_the_layer_are_exact_against_onnxruntime_conv():
    """Output channels 7 (a short panel alone) and 130 (two panels and a short one); 2 images of 9x9 and
    5x5 pixels (tiles of 6 cut across rows and images); a 3x3 stride-2 conv with padding and no ReLU, a 1x1
    stride-1 one with a residual and ReLU; a border on the input and the output; on 1, 2 and 3 threads.
    A NaN left in the output (a pixel or channel never written) fails too."""
    run = run_python("-c", ODD_TILES, env={"NUMBA_NUM_THREADS": "3"})
    assert run.returncode == 0, run.stderr
    report = last_json(run.stdout)
    assert len(report) == 6
    for case, (error, border_written) in report.items():
        assert error <= 1e-5, (case, error)  # relative to the largest output
        assert not border_written, case


@pytest.mark.parametrize("n", [1, 3, 8])
def test_a_batch_is_more_pixels_of_the_same_gemm(s08, n, store, sample_batch, judge_logits):
    """Batches of 1, 3 and 8 (the sample images, repeated to 8) against the judge, each image in its place."""
    batch, _ = sample_batch
    pick = [i % len(batch) for i in range(n)]
    logits = s08.ResNet50(store, max_batch=n, threads=2)(np.ascontiguousarray(batch[pick]))
    for row, i in enumerate(pick):
        verdict = compare(logits[row], judge_logits[i])
        assert verdict.ok, f"08 at batch {n}, image {row}: {verdict}"


def test_parallel_regions_per_image_are_one_per_conv_as_in_07(s08, store):
    assert parallel_regions_per_image(s08.ResNet50(store).source) == len(spec.CONVS) + 4  # + entry, pools, fc
