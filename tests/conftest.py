"""Shared fixtures: the weight store, the sample images and the judge's logits for them."""

import numpy as np
import pytest

from common import stages
from common.images import load_batch, sample_images
from common.make_weights import make_random
from common.paths import weights_dir
from common.reference import Reference
from common.weights import WeightStore


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> WeightStore:
    """The project's store (what `make test` prepares); a fresh random one if there is none."""
    path = weights_dir()
    if not (path / "manifest.json").exists():
        path = tmp_path_factory.mktemp("weights") / "store"
        make_random(path, seed=0)
    return WeightStore(path)


@pytest.fixture(scope="session")
def sample_batch() -> tuple[np.ndarray, list]:
    batch, paths, bad = load_batch(sample_images())
    assert not bad and len(paths) >= 6, (bad, paths)
    return batch, paths


@pytest.fixture(scope="session")
def judge_logits(store, sample_batch) -> np.ndarray:
    batch, _ = sample_batch
    return Reference(store, max_batch=len(batch))(batch)


STAGES = stages.available()


def stage_params():
    """One pytest param per stage folder, the slow naive stage marked."""
    return [pytest.param(s, id=s.name, marks=[pytest.mark.slow] if s.key == "01" else []) for s in STAGES]
