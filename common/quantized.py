"""The int8 model: the judge's graph quantized by ONNX Runtime's own tool, and ONNX Runtime running it.

This is what a user who wants speed on a CPU deploys: `onnxruntime.quantization.quantize_static` on the fp32
graph (common.reference.build_onnx) after its pre-processing (BatchNorm folded into the convs), in the QDQ
format, per-channel symmetric int8 weights, asymmetric uint8 activations, int32 biases, calibrated with
MinMax on the sample images. It is made once per weight store, calibration images and ONNX Runtime version,
and kept in the private cache folder with its sha256 beside it, checked at every load.

ONNX Runtime runs it as QLinearConv, QLinearAdd, QLinearGlobalAveragePool and QGemm with integer
accumulators, so its logits are the int8 judge for a stage doing the same integer arithmetic (stage 10):
within `TOLERANCE_STEPS` steps of the output's quantization scale (see `compare_int8`). Every int8 figure
also reports its agreement with the fp32 judge (`agreement`): what quantizing costs, on these weights.
"""

import contextlib
import hashlib
import io
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from common import spec
from common.errors import LadderError
from common.files import FileRefused, read_regular, write_atomic
from common.images import load_batch, sample_images
from common.inputs import check_batch, check_max_batch, check_threads
from common.paths import cache_dir
from common.reference import Verdict, build_onnx, session

CALIBRATION = "MinMax"  # onnxruntime.quantization.CalibrationMethod: each tensor's range over the images
SCHEME = "QDQ, per-channel symmetric int8 weights, asymmetric uint8 activations, int32 bias"
# Two integer pipelines that round every requantization the same way give the same logits. What may differ
# is a tie (x.5 after scaling) rounded another way, or a float product formed in another order: a step of
# one activation, which later layers carry forward. The logits are multiples of the output scale; a stage
# is within the judge's tolerance when no logit is more than this many of those steps away.
TOLERANCE_STEPS = 2
MAX_MODEL_BYTES = 256 << 20  # the int8 ResNet-50 is 26 MB: a cached file larger than this is not ours


class QuantizeError(LadderError):
    """The int8 model could not be made (a broken onnxruntime.quantization, an unreadable image)."""


def _store_digest(store) -> str:
    """The weight store's identity: the sha256 of its tensors as its manifest lists them."""
    tensors = store.manifest["tensors"]
    text = json.dumps({name: tensors[name]["sha256"] for name in sorted(tensors)})
    return hashlib.sha256(text.encode()).hexdigest()


def _key(store, images: list[Path]) -> str:
    import onnxruntime

    h = hashlib.sha256()
    for part in (_store_digest(store), onnxruntime.__version__, CALIBRATION, SCHEME):
        h.update(part.encode() + b"\0")
    for path in images:
        try:
            h.update(hashlib.sha256(path.read_bytes()).digest())
        except OSError as e:
            raise QuantizeError(f"{path}: cannot read this calibration image: {e.strerror or e}") from None
    return h.hexdigest()[:24]


def _calibration_batch(images: list[Path]) -> np.ndarray:
    batch, _, bad = load_batch(images)
    if bad or not len(batch):
        raise QuantizeError(f"calibration needs the sample images: {bad[0] if bad else 'images/ is empty'}")
    return batch


def _quantize(store, batch: np.ndarray) -> bytes:
    """The QDQ model's bytes, made by ONNX Runtime's tools (a few seconds)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Images(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = iter([{spec.INPUT: batch[i : i + 1]} for i in range(len(batch))])

        def get_next(self):
            return next(self.left, None)

    with tempfile.TemporaryDirectory() as tmp:
        fp32, folded, int8 = (os.path.join(tmp, name) for name in ("fp32.onnx", "folded.onnx", "int8.onnx"))
        onnx.save(build_onnx(store), fp32)
        # Shapes from ONNX's own inference (the symbolic one needs sympy); ORT's optimizer folds BatchNorm.
        quant_pre_process(fp32, folded, skip_symbolic_shape=True)
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrator prints its progress
            quantize_static(
                folded,
                int8,
                Images(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, CALIBRATION),
            )
        return Path(int8).read_bytes()


def int8_model(store, images: list[Path] | None = None) -> onnx.ModelProto:
    """The int8 model for this weight store, from the cache when it holds it (checked), made otherwise."""
    images = sample_images() if images is None else images
    folder = cache_dir("int8")
    key = _key(store, images)
    path, digest_path = folder / f"resnet50-int8-{key}.onnx", folder / f"resnet50-int8-{key}.sha256"
    with contextlib.suppress(OSError, FileRefused, UnicodeDecodeError):
        data = read_regular(path, MAX_MODEL_BYTES)
        if hashlib.sha256(data).hexdigest() == read_regular(digest_path, 1024).decode().strip():
            return onnx.load_from_string(data)
        print(f"{path}: does not match its checksum; making the int8 model again", file=sys.stderr)
    print(f"int8: quantizing the model for these weights with onnxruntime.quantization ({CALIBRATION}, "
          f"{len(images)} images; once per weight store) ...", file=sys.stderr)  # fmt: skip
    try:
        data = _quantize(store, _calibration_batch(images))
    except (ImportError, ValueError, RuntimeError, onnx.checker.ValidationError) as e:
        raise QuantizeError(f"onnxruntime.quantization failed: {type(e).__name__}: {e}".splitlines()[0]) from None
    with contextlib.suppress(OSError):  # a cache that cannot be written only costs the next run the seconds
        write_atomic(path, data)
        write_atomic(digest_path, hashlib.sha256(data).hexdigest() + "\n")
    return onnx.load_from_string(data)


def output_scale(model: onnx.ModelProto) -> float:
    """The quantization step of the logits: the scale of the graph's last QuantizeLinear."""
    inits = {t.name: t for t in model.graph.initializer}
    last = [n for n in model.graph.node if n.op_type == "QuantizeLinear"][-1]
    return float(numpy_helper.to_array(inits[last.input[1]]))


class Int8Reference:
    """ONNX Runtime on the int8 model, with the stage contract: Int8Reference(store)(x) -> logits."""

    def __init__(self, store, max_batch: int = 1, threads: int = 1, model: onnx.ModelProto | None = None) -> None:
        self.max_batch = check_max_batch(max_batch)
        self.threads = check_threads(threads, os.cpu_count() or 1)
        self.model = int8_model(store) if model is None else model
        self.scale = output_scale(self.model)
        self._session = session(self.model, self.threads)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._session.run([spec.LOGITS], {spec.INPUT: check_batch(x, self.max_batch)})[0]


def compare_int8(logits: np.ndarray, reference: np.ndarray, scale: float) -> Verdict:
    """The int8 judge's rule: every logit within TOLERANCE_STEPS output steps of ONNX Runtime int8's, the
    same top-1 for every image."""
    logits = np.asarray(logits, np.float64).reshape(-1, spec.NUM_CLASSES)
    reference = np.asarray(reference, np.float64).reshape(-1, spec.NUM_CLASSES)
    tol = TOLERANCE_STEPS * scale
    if logits.shape != reference.shape:
        return Verdict(False, float("inf"), tol, f"shape {logits.shape} vs the int8 judge's {reference.shape}")
    if not np.isfinite(logits).all():
        return Verdict(False, float("inf"), tol, "NaN or Inf in the logits")
    diff = np.abs(logits - reference).max(axis=1)
    for i, (got, want) in enumerate(zip(logits, reference, strict=True)):
        where = f"image {i}: " if len(logits) > 1 else ""
        if diff[i] > tol * (1 + 1e-6):
            return Verdict(False, float(diff.max()), tol, f"{where}max |diff| {diff[i]:.3g} > {tol:.3g} "
                           f"({diff[i] / scale:.1f} steps of the output scale {scale:.3g})")  # fmt: skip
        if int(np.argmax(got)) != int(np.argmax(want)):
            return Verdict(False, float(diff.max()), tol, f"{where}top-1 {int(np.argmax(got))} vs the int8 judge's "
                           f"{int(np.argmax(want))}")  # fmt: skip
    return Verdict(True, float(diff.max()), tol, "")


@dataclass(frozen=True)
class Agreement:
    """How an int8 result agrees with the fp32 judge: what quantizing cost on these images."""

    top1: int
    images: int
    max_abs_diff: float

    def as_dict(self) -> dict:
        return {"top1_agree": self.top1, "images": self.images, "max_abs_diff_fp32": round(self.max_abs_diff, 4)}

    def __str__(self) -> str:
        return f"top-1 as fp32 on {self.top1} of {self.images} images, logits up to {self.max_abs_diff:.3g} apart"


def agreement(logits: np.ndarray, fp32: np.ndarray) -> Agreement:
    logits = np.asarray(logits, np.float64).reshape(-1, spec.NUM_CLASSES)
    fp32 = np.asarray(fp32, np.float64).reshape(-1, spec.NUM_CLASSES)
    same = int((logits.argmax(axis=1) == fp32.argmax(axis=1)).sum())
    return Agreement(same, len(logits), float(np.abs(logits - fp32).max()))


@dataclass(frozen=True)
class Layer:
    """One step of the int8 model as a stage that does its arithmetic needs it: (scale, zero point) pairs
    for its input `x`, its own output `y` (a conv's, before any residual add), the `residual` and the
    stored result `out` (after the add; `y` otherwise); a conv's or the classifier's int8 weights
    (per-output-channel scales, zero points 0) and int32 bias."""

    x: tuple[float, int] | None
    y: tuple[float, int]
    out: tuple[float, int]
    weight: np.ndarray | None = None
    weight_scale: np.ndarray | None = None
    bias: np.ndarray | None = None
    residual: tuple[float, int] | None = None


def layers(model: onnx.ModelProto) -> dict[str, Layer]:
    """The int8 model read step by step (keys: spec.INPUT and every step's name), by the graph's structure:
    the fp32 graph's tensor names survive quantizing up to a ':' suffix (common.reference.build_onnx)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    made_by = {out: node for node in model.graph.node for out in node.output}
    quantized_by: dict[str, onnx.NodeProto] = {}  # a tensor's (first) QuantizeLinear
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            quantized_by.setdefault(node.input[0], node)

    def qparams(node) -> tuple[float, int]:
        return float(inits[node.input[1]]), int(inits[node.input[2]]) if len(node.input) > 2 else 0

    def dequantized(name: str) -> onnx.NodeProto:
        node = made_by.get(name)
        if node is None or node.op_type != "DequantizeLinear":
            raise QuantizeError(f"int8 model: {name} is not the output of a DequantizeLinear")
        return node

    def quantized_output(name: str) -> tuple[float, int]:
        if name not in quantized_by:
            raise QuantizeError(f"int8 model: {name} is not quantized (an operator ONNX Runtime keeps in float?)")
        return qparams(quantized_by[name])

    def weights(name: str) -> tuple[np.ndarray, np.ndarray]:
        node = dequantized(name)
        values, scale = inits[node.input[0]], inits[node.input[1]]
        zero = inits[node.input[2]] if len(node.input) > 2 else np.zeros(1)
        if np.any(zero != 0):
            raise QuantizeError(f"int8 model: {name} has weight zero points other than 0")
        return values, np.asarray(scale, np.float32)

    if any(n.op_type == "Relu" for n in model.graph.node):
        raise QuantizeError("int8 model: a Relu survived quantizing (expected folded into the uint8 clamp)")
    out: dict[str, Layer] = {}
    out[spec.INPUT] = Layer(None, quantized_output(spec.INPUT), quantized_output(spec.INPUT))
    for node in model.graph.node:
        step = node.output[0].split(":")[0]
        if node.op_type in ("Conv", "Gemm"):
            x = qparams(dequantized(node.input[0]))
            w, scale = weights(node.input[1])
            bias = inits[dequantized(node.input[2]).input[0]].astype(np.int32)
            y = quantized_output(node.output[0])
            name = spec.LOGITS if node.op_type == "Gemm" else step
            out[name] = Layer(x, y, y, w, scale, bias)
        elif node.op_type == "Add":
            a, b = (made_by[i] for i in node.input)
            conv = next(made_by[made_by[i].input[0]].input[0] for i in node.input)  # DQ <- Q <- conv output
            step = conv.split(":")[0]
            other = b if made_by[a.input[0]].input[0] == conv else a
            layer = out[step]
            out[step] = Layer(layer.x, layer.y, quantized_output(node.output[0]), layer.weight, layer.weight_scale,
                              layer.bias, qparams(other))  # fmt: skip
        elif node.op_type == "GlobalAveragePool":
            out[step] = Layer(qparams(dequantized(node.input[0])), quantized_output(node.output[0]),
                              quantized_output(node.output[0]))  # fmt: skip
    missing = [s.name for s in spec.STEPS if s.op != "maxpool" and s.name not in out]
    if missing:
        raise QuantizeError(f"int8 model: no quantized operator for {', '.join(missing[:3])}")
    return out
