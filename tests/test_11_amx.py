"""Stage 11 (AMX): its tile makes the same int32 sums as 10's and stores the same bytes, on every window shape
the network has (and a few it has not); its hot loop is tile instructions; the AMX peak's kernel computes
what it claims; and a machine without AMX gets a one-line reason, never code its CPU cannot run. The whole
network against ONNX Runtime int8 is tests/test_stages_vs_judge.py's, on every sample image."""

import re

import numpy as np
import pytest
from numba import njit

from common import amx, stages, vnni
from common.errors import LadderError

S11 = stages.find("11")
needs_amx = pytest.mark.skipif(amx.available() is not None, reason=f"11_amx: {amx.available()}")


def tile_runner(kind, residual: bool):
    tile = (amx if kind == "amx" else vnni).tile(amx.ROWS, 4, residual)
    if residual:

        @njit
        def run(x, at, window, w, panel, bias, scale, quant, y):
            tile(x, at, window, w, panel, bias, scale, quant, y, y)  # the output over its residual, as 11 does

    else:

        @njit
        def run(x, at, window, w, panel, bias, scale, quant, y):
            tile(x, at, window, w, panel, bias, scale, quant, y)

    return run


@needs_amx
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize(
    "taps, length",
    [(1, 64), (3, 192), (7, 28), (1, 256), (1, 2048), (3, 36), (1, 4)],  # 1x1, 3x3, the stem, short runs
)
def test_the_amx_tile_stores_what_the_vnni_tile_stores(taps, length, residual):
    """Random bytes, weights and requantization; pixels at random places, the last repeated (a short last
    block); two panels. 10's tile (its sums exact: tests/test_10_int8.py) is the reference, bit for bit."""
    rng = np.random.default_rng(taps * 1000 + length)
    x = rng.integers(0, 256, 300_000, dtype=np.uint8)
    at = np.zeros((3, amx.ROWS), np.int64)
    at[0] = rng.integers(0, 200_000, amx.ROWS)
    at[1] = at[2] = np.arange(amx.ROWS) * 128
    at[:, -1] = at[:, -2]
    w = rng.integers(-128, 128, 2 * taps * (length // 4) * 256 + 4096, dtype=np.int8)
    bias = rng.integers(-5000, 5000, 128, dtype=np.int32)
    scale = (rng.random(128, dtype=np.float32) * 0.002).astype(np.float32)
    quant = np.array([-10, 245, 10, 0.7, 0.5, 3.0], np.float32)
    window = np.array([taps, length + 40, length])
    y = rng.integers(0, 256, amx.ROWS * 128, dtype=np.uint8)
    for panel in range(2):
        got, expected = y.copy(), y.copy()
        tile_runner("amx", residual)(x, at, window, w, panel, bias, scale, quant, got)
        tile_runner("vnni", residual)(x, at, window, w, panel, bias, scale, quant, expected)
        assert np.array_equal(got, expected), f"panel {panel}: {np.count_nonzero(got != expected)} bytes differ"
        assert not np.array_equal(got, y), "the tile stored nothing"


def conv_runner(kind):
    """A conv kernel's loop in one call, as 11's generated code runs it: blocks of 16 pixels, each block's
    panels one after another, `at` refilled only when the block changes (the AMX tile then reuses the A
    tiles it copied for the block's first panel), and a block that goes back to earlier pixels."""
    tile = (amx if kind == "amx" else vnni).tile(amx.ROWS, 4, False)

    @njit
    def run(x, places, window, w, panels, bias, scale, quant, y):
        at = np.zeros((3, 16), np.int64)
        for block in range(places.shape[0]):
            at[0] = places[block]
            at[1] = np.arange(16) * 192 + block * 3072  # each pixel's 3 panels of 64 channels
            for panel in range(panels):
                tile(x, at, window, w, panel, bias, scale, quant, y)

    return run


@needs_amx
def test_a_kernel_that_runs_a_blocks_panels_in_turn_gets_the_vnni_tiles_bytes():
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, 300_000, dtype=np.uint8)
    places = rng.integers(0, 200_000, (3, amx.ROWS))
    places[2] = places[0]  # back to the first block's pixels, after another block
    taps, length, panels = 3, 192, 3
    w = rng.integers(-128, 128, panels * taps * (length // 4) * 256 + 4096, dtype=np.int8)
    bias = rng.integers(-5000, 5000, 64 * panels, dtype=np.int32)
    scale = (rng.random(64 * panels, dtype=np.float32) * 0.002).astype(np.float32)
    quant = np.array([-10, 245, 10], np.float32)
    window = np.array([taps, length + 40, length])
    got, expected = np.zeros(3 * 3072, np.uint8), np.zeros(3 * 3072, np.uint8)
    conv_runner("amx")(x, places, window, w, panels, bias, scale, quant, got)
    conv_runner("vnni")(x, places, window, w, panels, bias, scale, quant, expected)
    assert np.array_equal(got, expected) and np.count_nonzero(got) > got.size // 4  # (ReLU zeros the rest)


@needs_amx
def test_the_tiles_hot_loop_is_tile_loads_and_four_tdpbusd():
    run = tile_runner("amx", True)
    u8, i8 = np.zeros(8192, np.uint8), np.zeros(8192, np.int8)
    run(u8, np.zeros((3, amx.ROWS), np.int64), np.array([1, 0, 64]), i8, 0, np.zeros(64, np.int32),
        np.zeros(64, np.float32), np.zeros(6, np.float32), u8)  # fmt: skip
    asm = run.inspect_asm(run.signatures[0])
    dots = len(re.findall(r"\btdpbusd\s+%tmm\d+, %tmm\d+, %tmm\d+", asm))
    assert dots >= 4 and dots % 4 == 0, dots  # one per C tile, the loop perhaps unrolled
    assert "ldtilecfg" in asm and re.search(r"\btileloadd\b", asm) and re.search(r"\btilestored\b", asm)


@needs_amx
def test_the_amx_peak_kernel_sums_what_it_claims():
    """Four C tiles, each A . B added reps times: with every byte 1, every int32 is reps x 64."""
    chains = amx.chains()

    @njit
    def kernel(scratch, reps):
        chains(scratch, reps)

    scratch = np.ones(8192, np.uint8)
    kernel(scratch, 3)
    assert np.array_equal(scratch[4096:].view(np.int32), np.full(1024, 3 * 64, np.int32))


def test_without_amx_the_stage_says_why_in_one_line_and_compiles_nothing(store, monkeypatch):
    module = stages.load(S11)
    if amx.available() is None:
        assert module.SKIP is None and module.ResNet50.unavailable is None
        monkeypatch.setattr(module.ResNet50, "unavailable", "needs Intel AMX for its tile: no AMX-INT8 here")
    else:
        assert module.ResNet50.unavailable == module.SKIP and "AMX" in module.SKIP and "\n" not in module.SKIP
    with pytest.raises(LadderError) as info:
        module.ResNet50(store, max_batch=1)
    assert str(info.value).startswith("stages/11_amx: needs Intel AMX") and "\n" not in str(info.value)
