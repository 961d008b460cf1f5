"""The judge: ResNet-50 as an ONNX graph built from the weight store, run by ONNX Runtime.

ONNX Runtime is an engine nobody here wrote, so agreeing with it means something. The graph uses only
standard operators (Conv, BatchNormalization, Relu, MaxPool, Add, GlobalAveragePool, Flatten, Gemm) with
the store's tensors as initializers; ONNX Runtime is free to fuse and reorder them as it does for its users.

`compare` is the rule every stage must pass on every sample image (docs/design.md, "The judge").
"""

import os
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from common import spec
from common.inputs import check_batch, check_max_batch, check_threads

OPSET = 17


def build_onnx(weights) -> onnx.ModelProto:
    """The whole network as an ONNX model with a dynamic batch dimension."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    for name in weights.names():
        inits.append(numpy_helper.from_array(weights.load(name), name))
    for step in spec.STEPS:
        out = step.dst
        if step.op == "conv":
            c = step.conv
            k, s, p = c.kernel, c.stride, c.pad
            nodes.append(
                helper.make_node(
                    "Conv",
                    [step.src, c.weight],
                    [f"{out}:conv"],
                    kernel_shape=[k, k],
                    strides=[s, s],
                    pads=[p, p, p, p],
                    name=c.name,
                )
            )
            bn = [f"{c.bn}.{f}" for f in ("weight", "bias", "running_mean", "running_var")]
            y = f"{out}:bn"
            nodes.append(
                helper.make_node("BatchNormalization", [f"{out}:conv", *bn], [y], epsilon=spec.BN_EPS, name=c.bn)
            )
            if step.residual:
                nodes.append(helper.make_node("Add", [y, step.residual], [f"{out}:add"], name=f"{out}.add"))
                y = f"{out}:add"
            if step.relu:
                nodes.append(helper.make_node("Relu", [y], [f"{out}:relu"], name=f"{out}.relu"))
                y = f"{out}:relu"
            nodes.append(helper.make_node("Identity", [y], [out]))
        elif step.op == "maxpool":
            k, s, p = spec.MAXPOOL
            nodes.append(
                helper.make_node(
                    "MaxPool", [step.src], [out], kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p], name=out
                )
            )
        elif step.op == "avgpool":
            nodes.append(helper.make_node("GlobalAveragePool", [step.src], [f"{out}:4d"], name=out))
            nodes.append(helper.make_node("Flatten", [f"{out}:4d"], [out], axis=1))
        else:
            nodes.append(helper.make_node("Gemm", [step.src, "fc.weight", "fc.bias"], [out], transB=1, name=out))
    size = spec.IMAGE_SIZE
    graph = helper.make_graph(
        nodes,
        "resnet50",
        [helper.make_tensor_value_info(spec.INPUT, TensorProto.FLOAT, ["N", spec.IN_CHANNELS, size, size])],
        [helper.make_tensor_value_info(spec.LOGITS, TensorProto.FLOAT, ["N", spec.NUM_CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="resnet50-ladder")
    model.ir_version = 8
    return model


def session(model: onnx.ModelProto, threads: int = 1, spinning: bool = True, profile_prefix: str | None = None):
    """An ONNX Runtime CPU session with `threads` intra-op threads and all graph optimizations (with
    `profile_prefix`, ONNX Runtime's per-node profiler writes its trace there)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def conv_reference(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """One ONNX Conv node run by ONNX Runtime: the judge's answer for a single convolution."""
    k = w.shape[2]
    node = helper.make_node(
        "Conv", ["x", "w"], ["y"], kernel_shape=[k, k], strides=[stride, stride], pads=[pad, pad, pad, pad]
    )
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return session(model).run(["y"], {"x": x})[0]


class Reference:
    """ONNX Runtime with the stage contract: Reference(weights)(x) -> logits."""

    def __init__(self, weights, max_batch: int = 1, threads: int = 1, spinning: bool = True) -> None:
        self.max_batch = check_max_batch(max_batch)
        self.threads = check_threads(threads, os.cpu_count() or 1)
        self._session = session(build_onnx(weights), threads, spinning)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The same input check as every stage's: the judge must not quietly convert what a stage refuses."""
        return self._session.run([spec.LOGITS], {spec.INPUT: check_batch(x, self.max_batch)})[0]


# docs/design.md: max |difference| <= 1e-3 x max |logit|, same top-1, same top-5 where the 5th/6th margin allows.
RELATIVE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Verdict:
    ok: bool
    max_abs_diff: float
    tolerance: float
    reason: str

    def __str__(self) -> str:
        state = "matches the judge" if self.ok else f"WRONG: {self.reason}"
        return f"{state} (max |diff| {self.max_abs_diff:.3g}, tolerance {self.tolerance:.3g})"


def compare(logits: np.ndarray, reference: np.ndarray) -> Verdict:
    """Judge one image's (or a batch's) logits against the reference's."""
    logits = np.asarray(logits, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if logits.shape != reference.shape:
        return Verdict(False, float("inf"), 0.0, f"shape {logits.shape} vs the judge's {reference.shape}")
    logits = logits.reshape(-1, spec.NUM_CLASSES)
    reference = reference.reshape(-1, spec.NUM_CLASSES)
    if not np.isfinite(logits).all():
        return Verdict(False, float("inf"), 0.0, "NaN or Inf in the logits")
    worst, tol_min = 0.0, float("inf")
    for i, (got, want) in enumerate(zip(logits, reference, strict=True)):
        tol = RELATIVE_TOLERANCE * float(np.abs(want).max())
        diff = float(np.abs(got - want).max())
        worst, tol_min = max(worst, diff), min(tol_min, tol)
        where = f"image {i}: " if len(logits) > 1 else ""
        if diff > tol:
            return Verdict(False, diff, tol, f"{where}max |diff| {diff:.3g} > {tol:.3g}")
        order = np.argsort(-want, kind="stable")
        if int(np.argmax(got)) != int(order[0]):
            return Verdict(False, diff, tol, f"{where}top-1 {int(np.argmax(got))} vs the judge's {int(order[0])}")
        if want[order[4]] - want[order[5]] > tol:
            top5 = set(np.argsort(-got, kind="stable")[:5].tolist())
            if top5 != set(order[:5].tolist()):
                return Verdict(False, diff, tol, f"{where}top-5 differs from the judge's")
    return Verdict(True, worst, tol_min, "")
