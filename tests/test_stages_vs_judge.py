"""Every stage against the judge (ONNX Runtime) on every sample image, with the judge's tolerance (docs/design.md);
the int8 stage against ONNX Runtime int8 (common/quantized.py)."""

import numpy as np
import pytest

from common import stages
from common.errors import ModelInputError
from common.quantized import compare_int8
from common.reference import compare
from tests.conftest import stage_params


@pytest.mark.parametrize("stage", stage_params())
def test_stage_matches_judge_on_every_sample_image(stage, store, sample_batch, judge_logits, int8_judge):
    """The naive stage (about 6-10 s an image) on one image: every other stage covers every image, and the
    bench judges 01 on each image it times."""
    batch, paths = sample_batch
    if stage.key == "01":
        batch, paths, judge_logits = batch[:1], paths[:1], judge_logits[:1]
    module = stages.load(stage)
    # A threaded stage (06 on) on one thread and on every core numba has: the same answers either way.
    for threads in [1, None] if stages.threaded(module) else [None]:
        model = module.ResNet50(store, max_batch=len(batch), **({"threads": threads} if threads else {}))
        logits = model(batch)
        assert logits.shape == (len(batch), 1000) and logits.dtype == np.float32
        for i, path in enumerate(paths):
            if getattr(module, "PRECISION", "fp32") == "int8":
                verdict = compare_int8(logits[i], int8_judge[0][i], int8_judge[1])
            else:
                verdict = compare(logits[i], judge_logits[i])
            assert verdict.ok, f"{stage.name} on {threads or 'every'} thread(s), {path.name}: {verdict}"


@pytest.mark.parametrize("stage", stage_params())
def test_stage_refuses_bad_input_before_computing(stage, store):
    model = stages.load(stage).ResNet50(store, max_batch=2)
    good = np.zeros((1, 3, 224, 224), np.float32)
    bad = {
        "shape": np.zeros((1, 3, 225, 224), np.float32),
        "channels last": np.zeros((1, 224, 224, 3), np.float32),
        "dtype": good.astype(np.float64),
        "layout": np.asfortranarray(good),
        "batch": np.zeros((3, 3, 224, 224), np.float32),
        "nan": np.full((1, 3, 224, 224), np.nan, np.float32),
        "not an array": [[0.0]],
    }
    for what, x in bad.items():
        with pytest.raises(ModelInputError) as info:
            model(x)
        assert isinstance(info.value, ValueError), what
        assert "\n" not in str(info.value), what
