"""Stage 04's claim: a forward pass makes a fixed handful of numba runtime allocations, not a few per layer.

numba counts its runtime (NRT) allocations only when NUMBA_NRT_STATS=1 is set before it is imported, so the
counting runs in a child process. Every array handed from Python to compiled code is counted once (it is
wrapped for numba's reference counting): that boundary cost is measured on its own, with an empty plan.
"""

import numpy as np
import pytest

from common import spec, stages
from common.arena import LINE
from common.reference import compare
from tests.processes import last_json, run_python

COUNT = r"""
import json, os, sys
os.environ["NUMBA_NRT_STATS"] = "1"
from numba.core.runtime import rtsys
from common import stages
from common.images import load_batch, sample_images
from common.weights import WeightStore

store = WeightStore(sys.argv[1], verify=False)
batch, _, _ = load_batch(sample_images()[:2])

def allocations(f, *args):
    f(*args)  # compile or load from cache first
    before = rtsys.get_allocation_stats().alloc
    f(*args)
    return rtsys.get_allocation_stats().alloc - before

s04 = stages.load("04")
m = s04.ResNet50(store, max_batch=2)
rows = lambda last: allocations(s04.run_plan, batch[:1], m.params, m.plan, m.arena, m.scratch, 0, last)
print(json.dumps({
    "03": allocations(stages.load("03").ResNet50(store), batch[:1]),
    "04": allocations(m, batch[:1]),
    "04_batch2": allocations(m, batch[:2]),
    "04_rows": {str(k): rows(k) for k in (0, 1, 10, len(m.plan))},
}))
"""


@pytest.fixture(scope="module")
def counts(store) -> dict:
    run = run_python("-c", COUNT, str(store.path))
    assert run.returncode == 0, run.stderr
    return last_json(run.stdout)


def test_stage_03_allocates_at_least_once_per_layer(counts):
    assert counts["03"] >= len(spec.STEPS)


def test_stage_04_allocates_only_at_the_boundary(counts):
    boundary = counts["04_rows"]["0"]  # an empty plan: just the arrays passed into compiled code
    assert boundary <= 8
    assert counts["04"] == boundary
    assert counts["04_batch2"] == boundary


def test_stage_04_allocations_do_not_grow_with_the_number_of_layers(counts):
    rows = counts["04_rows"]
    assert rows["1"] == rows["10"] == rows[str(len(spec.STEPS))] == rows["0"]


def test_a_smaller_batch_reuses_the_same_buffers(store, sample_batch, judge_logits):
    batch, _ = sample_batch
    model = stages.load("04").ResNet50(store, max_batch=4)
    buffers = [(a, a.ctypes.data, a.size) for a in (model.arena, model.scratch, model.params)]
    full = model(batch[:4])
    one = model(batch[2:3])
    assert [(a, a.ctypes.data, a.size) for a in (model.arena, model.scratch, model.params)] == buffers
    assert compare(one[0], judge_logits[2]).ok and compare(full[2], judge_logits[2]).ok
    np.testing.assert_allclose(one[0], full[2], rtol=1e-5, atol=1e-5)


def test_the_arena_reuses_places_three_tensors_at_most(store):
    s04 = stages.load("04")
    where, size = s04.plan_arena(1)
    assert len(set(where.values())) == 3  # a bottleneck never has more than three tensors alive
    assert size < sum(np.prod(s.shape) for s in spec.STEPS) / 5
    assert all(offset % LINE == 0 for offset in where.values())


def test_a_tensor_takes_the_place_of_one_its_step_reads_last():
    """A bottleneck's output over its residual (07 on); refused when the residual is read after that step."""
    from common.arena import plan_arena

    block = spec.STEP_BY_NAME["layer1.0.conv3"]
    where, _ = plan_arena(1, over={block.dst: block.residual})
    assert where[block.dst] == where[block.residual]
    assert plan_arena(1)[0][block.dst] != where[block.residual]  # which it does not take unasked
    with pytest.raises(ValueError, match="cannot take"):  # layer1.0.conv3's output is read by layer1.1 after
        plan_arena(1, over={spec.STEP_BY_NAME["layer1.1.conv1"].dst: block.dst})
