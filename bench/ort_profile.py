"""ONNX Runtime's own time per layer, from its profiler, mapped to this project's layer names.

`SessionOptions.enable_profiling` makes ONNX Runtime write a trace of every node it ran (microseconds,
per run). The judge's graph names every Conv node by its layer (`layer1.0.conv1`), and ONNX Runtime keeps
that name when it fuses the BatchNormalization, Add and Relu after it into the conv, and adds a suffix
when it rewrites a node for its blocked layout (NCHWc). So a node belongs to the layer whose name it
starts with; what belongs to no layer (layout reorders between NCHW and NCHWc) is reported as its own row.
"""

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from common import spec
from common.files import read_regular
from common.reference import build_onnx, session

OTHER = "(layout reorders and other nodes)"
MAX_TRACE_BYTES = 256 * 2**20


def layer_of(node: str, layers: list[str]) -> str:
    """The layer a (possibly fused or renamed) ONNX Runtime node belongs to: the longest layer name the
    node's name starts with, at a boundary (so layer1.0.conv1 is not claimed by layer1.0.conv)."""
    if node in layers:
        return node
    found = [layer for layer in layers if node.startswith(layer) and not node[len(layer)].isalnum()]
    return max(found, key=len, default=OTHER)


def node_times(trace: list[dict]) -> dict[str, list[float]]:
    """Node name -> its kernel time in seconds, one entry per run, from ONNX Runtime's trace events."""
    times: dict[str, list[float]] = defaultdict(list)
    for event in trace:
        if event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time"):
            times[event["name"].removesuffix("_kernel_time")].append(event["dur"] / 1e6)
    return times


def layer_times(weights, x: np.ndarray, threads: int, passes: int, model=None) -> dict[str, float]:
    """Layer name (spec.STEPS' names, plus OTHER) -> seconds: each node's best run after a warm-up run,
    summed over the nodes of a layer. `model`: another graph of the same layers (the int8 one) to profile."""
    with tempfile.TemporaryDirectory(prefix="ort-profile-") as folder:
        graph = build_onnx(weights) if model is None else model
        sess = session(graph, threads, profile_prefix=str(Path(folder) / "ort"))
        for _ in range(passes + 1):
            sess.run([spec.LOGITS], {spec.INPUT: x})
        trace = json.loads(read_regular(sess.end_profiling(), MAX_TRACE_BYTES).decode("utf-8"))
    layers = [step.name for step in spec.STEPS]
    out: dict[str, float] = defaultdict(float)
    for node, runs in node_times(trace).items():
        out[layer_of(node, layers)] += min(runs[1:] or runs)  # the first run warms up
    return dict(out)
