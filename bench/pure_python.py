"""The line below the ladder: stage 01's conv kernel run as plain interpreted Python (numba's JIT off).

A whole image would take half an hour or more, so a slice of one layer is timed and the rate extrapolated
to the network's FLOP count. The result is labelled as an extrapolation wherever it is shown.
"""

import time

import numpy as np

from common import spec, stages

LAYER = "layer1.0.conv2"  # a 64 -> 64 3x3 conv at 56x56, the most common shape of the early layers


def measure(out_channels: int = 1) -> dict:
    conv = stages.load("01").conv2d.py_func  # the same Python source numba compiles for stage 01
    c = spec.STEP_BY_NAME[LAYER].conv
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, c.cin, c.h_in, c.w_in)).astype(np.float32)
    w = rng.standard_normal((out_channels, c.cin, c.kernel, c.kernel)).astype(np.float32)
    t0 = time.perf_counter()
    conv(x, w, c.stride, c.pad)
    seconds = time.perf_counter() - t0
    flops = 2 * out_channels * c.cin * c.kernel * c.kernel * c.h_out * c.w_out
    rate = flops / seconds
    return {
        "name": "pure Python (extrapolated)",
        "what": f"stage 01's conv2d without numba, on {out_channels} of {c.cout} output channels of {LAYER}",
        "measured_flops": flops,
        "measured_s": round(seconds, 3),
        "mflops": round(rate / 1e6, 2),
        "latency_s": round(spec.TOTAL_FLOPS / rate, 1),
    }
