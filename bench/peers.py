"""The engines a user would otherwise pick, behind the stage contract: make(max_batch)(x) -> logits.

fp32: numpy, ONNX Runtime, PyTorch, OpenVINO on the judge's graph. int8: ONNX Runtime and OpenVINO on the
int8 model ONNX Runtime's quantizer makes from it (common/quantized.py), the fastest path either engine
offers a user on a CPU.

Each peer sets its own thread count on every call (or at construction, when the engine fixes it then), so
peers at 1 thread and at every core can be interleaved with the stages in one process. A peer that is not
installed is reported as such, with how to install it, instead of silently missing from the chart.
"""

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from common import numpy_forward, quantized, spec
from common.reference import Reference, build_onnx

Model = Callable[[np.ndarray], np.ndarray]


@dataclass
class Peer:
    name: str  # "onnxruntime@1"
    label: str  # "ONNX Runtime"
    threads: int
    make: Callable[[int], Model] | None  # max_batch -> model; None when not installed
    missing: str = ""  # why it is not available, and how to get it
    precision: str = "fp32"  # "int8": runs the int8 model (common.quantized)
    # What its logits are held to (bench.measure.Judge): the fp32 judge, ONNX Runtime int8 (the same integer
    # arithmetic), or only "agreement" (another engine's int8 rounds its own way).
    judged_by: str = "fp32"


def numpy_peer(store, threads: int) -> Callable[[int], Model]:
    from threadpoolctl import ThreadpoolController

    controller = ThreadpoolController()
    params = store.load_all()

    def make(max_batch: int) -> Model:
        def run(x: np.ndarray) -> np.ndarray:
            with controller.limit(limits=threads, user_api="blas"):
                return numpy_forward.forward(params, x)

        return run

    return make


def onnxruntime_peer(store, threads: int) -> Callable[[int], Model]:
    def make(max_batch: int) -> Model:
        return Reference(store, max_batch=max_batch, threads=threads)

    return make


def torch_peer(store, threads: int) -> Callable[[int], Model]:
    """PyTorch eager (its functional ops, the kernels nn.Conv2d and friends call), no torchvision needed."""
    import torch
    import torch.nn.functional as F

    params = {k: torch.from_numpy(v) for k, v in store.load_all().items()}

    def forward(x: torch.Tensor) -> torch.Tensor:
        t = {spec.INPUT: x}
        for step in spec.STEPS:
            src = t[step.src]
            if step.op == "conv":
                c = step.conv
                y = F.conv2d(src, params[c.weight], stride=c.stride, padding=c.pad)
                y = F.batch_norm(
                    y,
                    params[f"{c.bn}.running_mean"],
                    params[f"{c.bn}.running_var"],
                    params[f"{c.bn}.weight"],
                    params[f"{c.bn}.bias"],
                    False,
                    0.0,
                    spec.BN_EPS,
                )
                if step.residual:
                    y = y + t[step.residual]
                t[step.dst] = F.relu(y) if step.relu else y
            elif step.op == "maxpool":
                k, s, p = spec.MAXPOOL
                t[step.dst] = F.max_pool2d(src, k, s, p)
            elif step.op == "avgpool":
                t[step.dst] = torch.flatten(F.adaptive_avg_pool2d(src, 1), 1)
            else:
                t[step.dst] = F.linear(src, params["fc.weight"], params["fc.bias"])
        return t[spec.LOGITS]

    def make(max_batch: int) -> Model:
        def run(x: np.ndarray) -> np.ndarray:
            torch.set_num_threads(threads)
            with torch.inference_mode():
                return forward(torch.from_numpy(x)).numpy()

        return run

    return make


def onnxruntime_int8_peer(store, threads: int) -> Callable[[int], Model]:
    model = quantized.int8_model(store)

    def make(max_batch: int) -> Model:
        return quantized.Int8Reference(store, max_batch=max_batch, threads=threads, model=model)

    return make


def openvino_peer(store, threads: int, int8: bool = False) -> Callable[[int], Model]:
    """OpenVINO on the judge's graph, or on the int8 model (it reads QDQ and runs its own int8 kernels). Its
    precision hint is f32 either way: on a CPU with BF16 it would otherwise run the float parts in bf16."""
    import openvino as ov

    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "resnet50.onnx")
        with open(path, "wb") as f:
            f.write((quantized.int8_model(store) if int8 else build_onnx(store)).SerializeToString())
        onnx_model = core.read_model(path)

    def make(max_batch: int) -> Model:
        model = onnx_model.clone()
        model.reshape({spec.INPUT: [max_batch, 3, spec.IMAGE_SIZE, spec.IMAGE_SIZE]})
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        compiled = core.compile_model(model, "CPU", config)
        request = compiled.create_infer_request()

        def run(x: np.ndarray) -> np.ndarray:
            n = len(x)
            if n < max_batch:  # the compiled shape is static: pad a smaller batch with zeros
                x = np.concatenate([x, np.zeros((max_batch - n, *x.shape[1:]), np.float32)])
            return request.infer({0: x})[0][:n].copy()

        return run

    return make


def openvino_int8_peer(store, threads: int) -> Callable[[int], Model]:
    return openvino_peer(store, threads, int8=True)


KINDS = [  # name, label, factory, module, how to install, precision, judged by
    ("numpy", "numpy im2col + BLAS", numpy_peer, None, "", "fp32", "fp32"),
    ("onnxruntime", "ONNX Runtime", onnxruntime_peer, "onnxruntime", "pip install onnxruntime", "fp32", "fp32"),
    ("torch", "PyTorch eager", torch_peer, "torch", "make torch", "fp32", "fp32"),
    ("openvino", "OpenVINO", openvino_peer, "openvino", "make openvino", "fp32", "fp32"),
    ("onnxruntime-int8", "ONNX Runtime int8", onnxruntime_int8_peer, "onnxruntime", "pip install onnxruntime",
     "int8", "int8"),
    ("openvino-int8", "OpenVINO int8", openvino_int8_peer, "openvino", "make openvino", "int8", "agreement"),
]  # fmt: skip


def peers(store, thread_counts: list[int]) -> list[Peer]:
    """Every peer at every thread count; missing engines come back with make=None and a reason."""
    import importlib.util

    out = []
    for name, label, factory, module, how, precision, judged_by in KINDS:
        for threads in thread_counts:
            peer = partial(Peer, f"{name}@{threads}", label, threads, precision=precision, judged_by=judged_by)
            if module and importlib.util.find_spec(module) is None:
                out.append(peer(None, f"not installed ({how})"))
                continue
            try:
                out.append(peer(factory(store, threads)))
            except Exception as e:  # a broken install is reported, not fatal to the whole benchmark
                out.append(peer(None, f"failed to load: {e}".splitlines()[0]))
    return out
