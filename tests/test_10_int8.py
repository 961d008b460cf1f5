"""Stage 10 (int8): ONNX Runtime int8 is an exact judge of its integer arithmetic, so every layer's uint8
output is compared with ONNX Runtime's own QLinearConv, QLinearAdd, pooling and QGemm outputs bit for bit;
the 4-byte dot product against numpy on both of its paths (VNNI, and the plain IR a CPU without it gets);
the assembly of the tile; and the int8 judge's rule."""

import re
import sys

import numpy as np
import onnx
import pytest
from numba import njit
from onnx import TensorProto, helper

from common import isa, quantized, spec, stages, vnni
from common.reference import session

S10 = stages.find("10")


@pytest.fixture(scope="module")
def s10():
    return stages.load(S10)


@pytest.fixture(scope="module")
def model10(s10, store):
    return s10.ResNet50(store, max_batch=1, threads=1)


def ort_tensors(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every quantized tensor of ONNX Runtime's int8 run, by this project's step names ("<step>:conv" for a
    bottleneck's conv output before the residual add)."""
    graph = onnx.ModelProto()
    graph.CopyFrom(model)
    residual = {s.name for s in spec.STEPS if s.residual}
    names = {}
    for node in graph.graph.node:
        if node.op_type == "QuantizeLinear":
            step = node.input[0].split(":")[0]
            step += ":conv" if node.input[0].endswith(":bn") and step in residual else ""
            names[node.output[0]] = step
            graph.graph.output.append(helper.make_tensor_value_info(node.output[0], TensorProto.UINT8, None))
    sess = session(graph, 1)
    outputs = [o.name for o in sess.get_outputs()]
    return {names.get(k, k): v for k, v in zip(outputs, sess.run(None, {spec.INPUT: x}), strict=True)}


def stored(s10, model, step: spec.Step) -> np.ndarray:
    """A step's output as the stage holds it in its arena, (H, W, C) bytes without the border, or (C,)."""
    at = model.tensor_at[step.dst]
    if step.op == "avgpool":
        return model.arena[at : at + spec.FC_IN // 4].view(np.uint8).copy()
    rows, row = s10.layout(step.dst)
    c, h, w = s10.chw(step.dst)
    edge = s10.border(step.dst)
    held = model.arena[at : at + rows * row // 4].view(np.uint8).reshape(rows, row // c, c)
    return held[edge : edge + h, edge : edge + w].copy()


@pytest.mark.parametrize("input_kind", ["photo", "noise"])
def test_every_layer_is_onnxruntime_int8_bit_for_bit(s10, model10, store, sample_batch, input_kind):
    """Each step's bytes against ONNX Runtime's QLinearConv / QLinearAdd / MaxPool / QLinearGlobalAveragePool
    output for the same step (every conv shape and epilogue of the network), and the logits against its
    QGemm + DequantizeLinear: equal, not close. A photo, and noise past the calibrated range (clamps)."""
    batch, _ = sample_batch
    noise = np.random.default_rng(7).normal(0, 2, (1, 3, 224, 224)).astype(np.float32)
    x = batch[4:5] if input_kind == "photo" else noise
    theirs = ort_tensors(model10.model, x)
    steps = model10.layer_steps(x)
    for (name, run), step in zip(steps[:-1], spec.STEPS[:-1], strict=True):
        run()
        ours = stored(s10, model10, step)
        want = theirs[step.dst]
        if step.op != "avgpool":
            want = want.reshape(ours.shape[2], *ours.shape[:2]).transpose(1, 2, 0)
        wrong = np.count_nonzero(ours.astype(int) - want.reshape(ours.shape))
        assert wrong == 0, f"{name}: {wrong} of {ours.size} bytes differ from ONNX Runtime int8's"
    logits = steps[-1][1]()
    reference = quantized.Int8Reference(store, model=model10.model)(x)
    assert np.array_equal(logits, reference), np.abs(logits - reference).max()


def test_the_int8_judge_holds_to_its_tolerance_in_output_steps():
    rng = np.random.default_rng(0)
    scale = 0.25
    reference = (rng.integers(0, 255, (2, 1000)) - 119).astype(np.float32) * scale
    reference[:, 3] = 100.0  # a clear top-1
    near = reference.copy()
    near[0, 10] += quantized.TOLERANCE_STEPS * scale
    assert quantized.compare_int8(near, reference, scale).ok
    far = reference.copy()
    far[1, 10] += (quantized.TOLERANCE_STEPS + 1) * scale
    verdict = quantized.compare_int8(far, reference, scale)
    assert not verdict.ok and "image 1" in verdict.reason and "steps" in verdict.reason
    close = reference.copy()
    close[0, 5] = 100.0 - scale  # a runner-up one step under the top
    flipped = close.copy()
    flipped[0, 5] = 100.0 + scale  # two steps up: within the tolerance, but another top-1
    assert "top-1" in quantized.compare_int8(flipped, close, scale).reason


@pytest.mark.parametrize("path", ["target", "plain IR"])
def test_dot4_sums_four_byte_products_exactly(path, monkeypatch):
    """The tile on random bytes against numpy's integer sum, with its VNNI instruction where the target has
    it, and with the plain IR a CPU without VNNI compiles (the extremes too: 255 x -128, no saturation)."""
    if path == "target" and vnni.instruction() is None:
        pytest.skip(f"{isa.target().describe()} has no VNNI: the plain-IR case covers it")
    if path == "plain IR":
        monkeypatch.setattr(vnni, "instruction", lambda target=None: None)
        vnni.tile.cache_clear()
    try:
        pixels, vectors = 3, 2
        tile = vnni.tile(pixels, vectors, residual=False)

        @njit
        def run(x, at, window, w, bias, scale, quant, y):
            tile(x, at, window, w, 0, bias, scale, quant, y)

        n = vnni.lanes() * vectors
        rng = np.random.default_rng(1)
        taps, length, row = 2, 32, 100
        x = rng.integers(0, 256, 400, dtype=np.uint8)
        x[:4] = 255
        at = np.zeros((3, pixels), np.int64)
        at[0] = [0, 50, 170]
        at[1] = np.arange(pixels) * n
        w = rng.integers(-128, 128, (taps * length // 4, n, 4), dtype=np.int8)
        w[0] = -128
        # The sums come back through the store: scale 1, no clamp that matters, as int32 via a wide range.
        sums = np.zeros((pixels, n), np.int64)
        for r in range(pixels):
            window = np.concatenate([x[at[0, r] + k * row : at[0, r] + k * row + length] for k in range(taps)])
            sums[r] = window.astype(np.int64) @ w.transpose(0, 2, 1).reshape(-1, n).astype(np.int64)
        # Shift every sum into [0, 255] exactly: bias = -min, scale = 1/2^k with the span under 256 * 2^k.
        low = int(sums.min())
        k = max(0, int(np.ceil(np.log2((sums.max() - low + 1) / 255))))
        y = np.zeros(pixels * n, np.uint8)
        quant = np.array([0, 255, 0], np.float32)
        run(x, at, np.array([taps, row, length]), w, np.full(n, -low, np.int32), np.full(n, 2.0**-k, np.float32),
            quant, y)  # fmt: skip
        expected = np.clip(np.rint((sums - low) * 2.0**-k), 0, 255)
        assert np.array_equal(y.reshape(pixels, n), expected.astype(np.uint8))
    finally:
        vnni.tile.cache_clear()


def test_the_tile_is_vnni_on_the_targets_vectors_with_nothing_spilled(s10):
    """On a VNNI target: the tile's hot loop is pixels x vectors vpdpbusd on the target's registers, one
    broadcast per pixel, and no accumulator goes to the stack. (The store after it may spill: with a residual,
    LLVM's scheduling model for Intel cores reads every residual early and spilled 25 vectors per tile on a
    Sapphire Rapids, none on Zen 4; 10's NOTES record it.)"""
    if vnni.instruction() is None:
        pytest.skip(f"{isa.target().describe()} has no VNNI (the bench lists 10 as skipped; make test checks it)")
    tile = vnni.tile(s10.PIXELS, s10.VECTORS, residual=True)

    @njit
    def run(x, at, window, w, bias, scale, quant, y, res):
        tile(x, at, window, w, 0, bias, scale, quant, y, res)

    u8, i8, i64 = np.zeros(4096, np.uint8), np.zeros(4096, np.int8), np.zeros((3, s10.PIXELS), np.int64)
    f32, i32 = np.zeros(s10.PANEL, np.float32), np.zeros(s10.PANEL, np.int32)
    run(u8, i64, np.array([1, 0, 4]), i8, i32, f32, np.zeros(6, np.float32), u8, u8)
    asm = run.inspect_asm(run.signatures[0])
    register = "zmm" if isa.target().vector_floats == 16 else "ymm"
    dots = re.findall(rf"vpdpbusd\s+.*%{register}", asm)
    assert len(dots) >= s10.PIXELS * s10.VECTORS, len(dots)
    lines = asm.splitlines()
    dot_lines = [i for i, line in enumerate(lines) if "vpdpbusd" in line]
    loop = lines[dot_lines[0] : dot_lines[-1] + 1]
    assert not [line for line in loop if "(%rsp)" in line], "the hot loop touches the stack"


def test_skip_says_what_the_stage_needs(s10):
    if vnni.instruction() is not None:
        assert s10.SKIP is None
    else:
        assert "VNNI" in s10.SKIP and "\n" not in s10.SKIP


def test_the_int8_model_is_cached_checked_and_remade_when_damaged(store, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESNET50_CACHE", str(tmp_path))
    first = quantized.int8_model(store)
    (model_file,) = (tmp_path / "int8").glob("*.onnx")
    assert quantized.int8_model(store).SerializeToString() == first.SerializeToString()
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    again = quantized.int8_model(store)
    assert "does not match its checksum" in capsys.readouterr().err
    assert again.SerializeToString() == first.SerializeToString()  # the quantizer is deterministic


def test_the_stage_reads_every_quantized_step_from_the_model(model10):
    layers = quantized.layers(model10.model)
    for step in spec.STEPS:
        if step.op == "maxpool":
            continue
        layer = layers[step.name]
        if step.conv:
            assert layer.weight.dtype == np.int8 and layer.weight.shape[:2] == (step.conv.cout, step.conv.cin)
            assert layer.bias.dtype == np.int32 and (layer.residual is not None) == bool(step.residual)
        if step.relu:
            assert layer.out[1] == 0, f"{step.name}: a ReLU's output has zero point {layer.out[1]}"
    assert sys.modules[model10.forward.__module__].__name__.startswith("resnet50_generated_10_int8")
