"""The machine's fp32 limit, measured: numpy's sgemm on 2048x2048 matrices, the best of several runs.

A vendor BLAS GEMM is as close to the FMA units' peak as ordinary code gets, so it is the ceiling the
charts draw. It is measured in the same run as everything else, at one thread and at all usable cores.
"""

import time

import numpy as np
from threadpoolctl import threadpool_limits

N = 2048
FLOPS = 2 * N**3


def gemm_gflops(threads: int, repeats: int = 5, n: int = N) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    best = float("inf")
    with threadpool_limits(limits=threads, user_api="blas"):
        np.matmul(a, b, out=out)  # warm up: page in, pick kernels, start threads
        for _ in range(repeats):
            t0 = time.perf_counter()
            np.matmul(a, b, out=out)
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def measure(cores: int, repeats: int = 5) -> dict:
    one = gemm_gflops(1, repeats)
    every = gemm_gflops(cores, repeats) if cores > 1 else one
    return {
        "method": f"numpy sgemm {N}x{N}x{N}, best of {repeats}",
        "gflops_1_thread": round(one, 1),
        "gflops_all_threads": round(every, 1),
        "threads_all": cores,
    }
