"""`make profile`: ONNX Runtime's nodes mapped to this project's layers, so the two can stand side by side."""

import json
from collections import Counter
from pathlib import Path

from bench import ort_profile, profile
from common import spec
from common.images import load_batch, sample_images
from common.reference import build_onnx, session

LAYERS = [step.name for step in spec.STEPS]


def test_layer_of_takes_the_longest_layer_name_at_a_boundary():
    assert ort_profile.layer_of("layer1.0.conv1", LAYERS) == "layer1.0.conv1"
    assert ort_profile.layer_of("layer1.0.conv3:bn_nchwc", LAYERS) == "layer1.0.conv3"  # fused and re-laid out
    assert ort_profile.layer_of("layer1.0.downsample.0:bn_nchwc", LAYERS) == "layer1.0.downsample.0"
    assert ort_profile.layer_of("conv1:relu_nchwc", LAYERS) == "conv1"
    assert ort_profile.layer_of("conv10", LAYERS) == ort_profile.OTHER  # not conv1's
    assert ort_profile.layer_of("ReorderOutput", LAYERS) == ort_profile.OTHER


def test_every_layer_of_onnxruntimes_optimized_graph_is_found_and_every_conv_once(store, tmp_path):
    x = load_batch(sample_images()[:1])[0]
    sess = session(build_onnx(store), 1, profile_prefix=str(tmp_path / "ort"))
    sess.run([spec.LOGITS], {spec.INPUT: x})
    nodes = ort_profile.node_times(json.loads(Path(sess.end_profiling()).read_text()))
    per_layer = Counter(ort_profile.layer_of(node, LAYERS) for node in nodes)
    assert set(LAYERS) <= set(per_layer), set(LAYERS) - set(per_layer)
    assert all(per_layer[c.name] == 1 for c in spec.CONVS), {c.name: per_layer[c.name] for c in spec.CONVS}


def test_the_layers_where_a_stage_loses_most_come_first():
    rows = [
        {"layer": "a", "ms": 2.0, "ort_ms": 1.0},
        {"layer": "b", "ms": 5.0, "ort_ms": 1.0},
        {"layer": "c", "ms": 1.0, "ort_ms": 3.0},  # a layer the stage wins is not listed
    ]
    assert [r["layer"] for r in profile.worst(rows)] == ["b", "a"]
