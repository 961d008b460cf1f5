"""Stage 07's claims: every activation written once, finished, in its reader's layout. The forward pass
calls one kernel per step (no BatchNorm, ReLU, add or copy kernel), the folded weights reproduce conv +
BatchNorm (+ residual, ReLU) against ONNX Runtime on single layers, the whole net matches the judge on 1 and
2 threads, and the count of parallel regions per image is the one NOTES.md gives."""

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from common import spec, stages
from common.reference import OPSET, session
from tests.source import parallel_regions_per_image


@pytest.fixture(scope="module")
def s07():
    return stages.load("07")


@pytest.fixture(scope="module")
def model(s07, store):
    return s07.ResNet50(store)


def test_the_forward_pass_calls_one_kernel_per_step_and_copies_nothing(model):
    source = model.source
    forward = source[source.index("def forward(") :]
    steps = re.split(r"\n    if first <= \d+ < last:  # .*\n", forward)[1:]
    assert len(steps) == len(spec.STEPS)
    calls = [re.findall(r"^\s+(\w+)\(", s, re.M) for s in steps]
    assert calls[0] == ["image_to_channels_last", "conv_3x224x224_to_64_k7_s2_relu_pad1"]  # the one copy
    assert all(len(c) == 1 for c in calls[1:]), calls
    for pattern in (r"\bbatchnorm\(", r"\brelu\(", r"\badd\(", r"scratch\[", r"\bxp\["):
        assert not re.search(pattern, source), pattern  # no BatchNorm, ReLU or add pass, no input copy


def conv_bn_graph(step: spec.Step, weights) -> onnx.ModelProto:
    """Conv -> BatchNormalization (-> Add) (-> Relu) as ONNX Runtime runs them, unfolded."""
    c = step.conv
    bn = [f"{c.bn}.{f}" for f in ("weight", "bias", "running_mean", "running_var")]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"], kernel_shape=[c.kernel] * 2, strides=[c.stride] * 2,
                         pads=[c.pad] * 4),
        helper.make_node("BatchNormalization", ["conv", *bn], ["y0"], epsilon=spec.BN_EPS),
    ]  # fmt: skip
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)]
    last = "y0"
    if step.residual:
        nodes.append(helper.make_node("Add", [last, "res"], ["y1"]))
        inputs.append(helper.make_tensor_value_info("res", TensorProto.FLOAT, None))
        last = "y1"
    if step.relu:
        nodes.append(helper.make_node("Relu", [last], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", [last], ["y"]))
    inits = [numpy_helper.from_array(weights.load(c.weight), "w")]
    inits += [numpy_helper.from_array(weights.load(t), t) for t in bn]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "layer", inputs, [output], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def stored(stage, tensor: str, nchw: np.ndarray) -> np.ndarray:
    """An (n, C, H, W) array in a stage's stored layout for `tensor` (07 and later): channels-last, zero
    border, row width."""
    rows, width = stage.layout(tensor)
    edge = stage.border(tensor)
    n, c, h, w = nchw.shape
    out = np.zeros((n, rows, width), np.float32)
    out[:, edge : edge + h, edge * c : (edge + w) * c] = nchw.transpose(0, 2, 3, 1).reshape(n, h, w * c)
    return out


@pytest.mark.parametrize("layer", ["layer1.0.conv2", "layer1.0.conv3", "layer2.0.conv2", "layer2.0.downsample.0"])
def test_a_folded_layer_matches_conv_batchnorm_residual_relu_in_onnxruntime(s07, model, store, layer):
    """3x3 with a border in and out, 1x1 with the residual and ReLU, 3x3 stride 2, 1x1 stride 2 without ReLU."""
    from numba import njit, prange

    step = spec.STEP_BY_NAME[layer]
    c = step.conv
    rng = np.random.default_rng(3)
    x = np.abs(rng.standard_normal((1, c.cin, c.h_in, c.w_in))).astype(np.float32)  # a ReLU output
    feeds = {"x": x}
    if step.residual:
        feeds["res"] = rng.standard_normal((1, c.cout, c.h_out, c.w_out)).astype(np.float32)
    want = session(conv_bn_graph(step, store)).run(["y"], feeds)[0]

    namespace = {"np": np, "njit": njit, "prange": prange}
    exec(s07.conv_source(step, [layer]).replace("cache=True", "cache=False"), namespace)  # no file to cache
    kernel = namespace[s07.kernel_name(step)]
    pool = model.pack(store)
    params, at = pool
    w = params[at[c.weight] : at[c.weight] + c.cout * c.kernel * s07.dot_length(c)]
    bias = params[at[s07.bias_name(c)] : at[s07.bias_name(c)] + c.cout]
    y = np.full((1, *s07.layout(step.dst)), np.nan, np.float32)
    args = [stored(s07, step.src, x), w.reshape(c.cout, c.kernel, -1), bias, y]
    if step.residual:
        args.append(stored(s07, step.residual, feeds["res"]))
    kernel(*args)
    edge = s07.border(step.dst)
    got = y[:, edge : edge + c.h_out, edge * c.cout : (edge + c.w_out) * c.cout]
    got = got.reshape(1, c.h_out, c.w_out, c.cout).transpose(0, 3, 1, 2)
    scale = float(np.abs(want).max())
    assert np.abs(got - want).max() <= 1e-4 * scale, (layer, float(np.abs(got - want).max()), scale)


def test_folding_is_the_algebra_in_notes(s07):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    gamma, beta, mean = (rng.standard_normal(4).astype(np.float32) for _ in range(3))
    var = rng.random(4).astype(np.float32) + 0.1
    folded, bias = s07.fold(w, gamma, beta, mean, var)
    x = rng.standard_normal(3).astype(np.float32)
    conv = w[:, :, 0, 0] @ x
    bn = gamma * (conv - mean) / np.sqrt(var + spec.BN_EPS) + beta
    np.testing.assert_allclose(folded[:, :, 0, 0] @ x + bias, bn, rtol=1e-5, atol=1e-5)


def test_parallel_regions_per_image_are_one_per_conv(model):
    """One per conv (BatchNorm, residual and ReLU are in its store), + the entry, the two pools and fc."""
    assert parallel_regions_per_image(model.source) == len(spec.CONVS) + 4
