"""A generated conv kernel on shapes ResNet-50 does not have, against ONNX Runtime's Conv: channel counts
that leave channels over after the blocks of 8, a 3-channel input, strides 1 and 2, on 1 to 3 threads."""

from tests.processes import last_json, run_python

# Runs in a child process: numba's thread pool size (NUMBA_NUM_THREADS) is fixed when numba is imported,
# and 3 threads on a 2-core machine is exactly the uneven split the threaded stages must survive.
ODD_CONVS = r"""
import json, sys
import numba, numpy as np
from numba import njit, prange
from common import spec, stages
from common.reference import conv_reference

stage = stages.load(sys.argv[1])
rng = np.random.default_rng(7)
report = {}
for cin, cout, k, stride, pad, hw in [(5, 7, 3, 2, 1, 9), (3, 19, 3, 1, 1, 6), (16, 13, 1, 2, 0, 8)]:
    c = spec.Conv("odd", "odd_bn", cin, cout, k, stride, pad, hw, hw)
    namespace = {"np": np, "njit": njit, "prange": prange}
    exec(stage.conv_source(c, ["odd"]).replace("cache=True", "cache=False"), namespace)  # no file to cache
    kernel = namespace[stage.conv_name(c)]
    x = rng.standard_normal((2, cin, hw, hw)).astype(np.float32)
    w = rng.standard_normal((cout, cin, k, k)).astype(np.float32)
    want = conv_reference(x, w, stride, pad)  # ONNX Runtime's Conv
    rows = np.zeros((cout, k, stage.dot_length(c)), np.float32)  # the pool's layout: rows padded to vectors
    rows[:, :, : k * cin] = w.transpose(0, 2, 3, 1).reshape(cout, k, k * cin)
    scratch = np.zeros(int(np.prod(stage.copy_shape(c))), np.float32)
    for threads in map(int, sys.argv[2].split(",")):
        numba.set_num_threads(threads)
        y = np.full((2, cout, c.h_out, c.w_out), np.nan, np.float32)  # NaN marks anything left uncomputed
        kernel(x, rows, y, scratch)
        report[f"{cin}->{cout} k{k} s{stride} threads={threads}"] = float(np.abs(y - want).max())
print(json.dumps(report))
"""


def odd_conv_errors(stage: str, threads: tuple[int, ...] = (1,)) -> dict[str, float]:
    """Case -> max |difference| from ONNX Runtime's Conv (NaN: an output channel was never written)."""
    run = run_python("-c", ODD_CONVS, stage, ",".join(map(str, threads)), env={"NUMBA_NUM_THREADS": "3"})
    assert run.returncode == 0, run.stderr
    return last_json(run.stdout)
