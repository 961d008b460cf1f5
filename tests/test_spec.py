"""The spec against facts computed elsewhere: ONNX's own shape inference and torchvision's published figures."""

import math

import onnx
from onnx import numpy_helper

from common import spec
from common.reference import build_onnx


def _onnx_shapes(store):
    model = onnx.shape_inference.infer_shapes(build_onnx(store), strict_mode=True)
    shapes = {}
    for value in list(model.graph.value_info) + list(model.graph.output):
        dims = [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]
        shapes[value.name] = tuple(dims)
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return model, shapes, weights


def test_mac_count_matches_onnx_shape_inference(store):
    """MACs counted from the shapes ONNX infers for each Conv and Gemm node, not from our arithmetic."""
    model, shapes, weights = _onnx_shapes(store)
    macs = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            cout, cin, kh, kw = weights[node.input[1]]
            _, c, h, w = shapes[node.output[0]]
            assert c == cout
            macs += cout * h * w * cin * kh * kw
        elif node.op_type == "Gemm":
            out_features, in_features = weights[node.input[1]]
            macs += out_features * in_features
    assert macs == spec.TOTAL_MACS
    assert round(spec.TOTAL_MACS / 1e9, 2) == 4.09  # torchvision's documented "GFLOPS" (MACs) for resnet50


def test_step_shapes_match_onnx_shape_inference(store):
    _, shapes, _ = _onnx_shapes(store)
    for step in spec.STEPS:
        assert shapes[step.dst][1:] == step.shape, step.name


def test_parameter_count_matches_torchvision():
    shapes = spec.tensor_shapes()
    running = [n for n in shapes if n.endswith(("running_mean", "running_var"))]
    params = sum(math.prod(s) for n, s in shapes.items() if n not in running)
    assert params == 25_557_032  # torchvision's documented num_params for ResNet50_Weights.IMAGENET1K_V1
    assert len(shapes) == 267  # 53 convs, 53 BN x 4, fc weight and bias (torchvision's num_batches_tracked aside)


def test_steps_read_only_tensors_already_written():
    written = {spec.INPUT}
    for step in spec.STEPS:
        assert step.src in written, step.name
        assert step.residual is None or step.residual in written, step.name
        written.add(step.dst)
    assert spec.STEPS[-1].dst == spec.LOGITS


def test_onnx_initializers_are_the_store(store):
    model = build_onnx(store)
    for t in model.graph.initializer[:5]:
        assert (numpy_helper.to_array(t) == store.load(t.name)).all()
