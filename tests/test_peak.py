"""The FMA peak is a real limit: its kernel's hot loop is packed FMAs on registers and nothing else."""


import numpy as np
import pytest
from numba import njit

from bench import peak
from common import isa


def test_the_fma_peak_kernel_is_register_fmas_only():
    target = isa.target()
    if target.arch not in isa.X86 or not target.fma:
        pytest.skip(f"{target.describe()}: no x86 FMA instruction to read")
    kernel = njit(peak.fma_chains.py_func)  # a fresh copy, its assembly kept
    assert kernel(3, np.float32(1.0), np.float32(1.0)) == sum(range(peak.CHAINS)) + 3 * peak.CHAINS
    asm = kernel.inspect_asm(kernel.signatures[0]).splitlines()
    fmas = [i for i, line in enumerate(asm) if "vfmadd" in line]
    loop = asm[fmas[0] : fmas[-1] + 1]
    register = {16: "zmm", 8: "ymm"}[target.vector_floats]  # the target's own vectors, every chain in one
    assert len(fmas) >= peak.CHAINS // target.vector_floats and all(f"%{register}" in asm[i] for i in fmas)
    assert not [line for line in loop if "(%" in line], "a memory access inside the FMA loop"


def test_measure_reports_both_limits_for_the_target():
    """What the bench records (speed is the bench's business, not a test's: no rate is asserted here)."""
    limits = peak.measure(1, repeats=1)
    assert limits["gflops_1_thread"] > 0 and limits["sgemm_gflops_1_thread"] > 0
    assert limits["isa"] == isa.target().name
    assert isa.target().registers // 2 * isa.target().vector_floats == peak.CHAINS


def test_the_int8_peak_kernel_computes_dot4_chains_and_is_vnni_on_registers():
    """Its result against numpy's model of the chains (each lane: acc += sum of its 4 bytes, signed, times
    the bytes 4, 3, 2, 1), and, on a VNNI target, a hot loop of vpdpbusd on the target's registers only."""
    reps = 3
    lanes = isa.target().vector_floats
    acc = np.repeat(np.arange(peak.DOT4_CHAINS, dtype=np.int64)[:, None], lanes, axis=1)
    for _ in range(reps):
        signed = acc.astype(np.int32).view(np.int8).reshape(peak.DOT4_CHAINS, lanes, 4).astype(np.int64)
        acc = (acc + signed @ np.array([4, 3, 2, 1])).astype(np.int32).astype(np.int64)  # int32 lanes wrap
    kernel = njit(peak.dot4_chains.py_func)
    assert kernel(reps) == int(acc.astype(np.int32).sum(dtype=np.int64).astype(np.int32))
    limits = peak.measure(1, repeats=1)
    assert limits["int8_gops_1_thread"] > 0 and "int8_method" in limits
    if peak.vnni.instruction() is None:
        pytest.skip(f"{isa.target().describe()}: no VNNI instruction to read")
    asm = kernel.inspect_asm(kernel.signatures[0]).splitlines()
    register = {16: "zmm", 8: "ymm"}[lanes]
    run, longest = 0, 0  # the loop body: one dot product per chain after another, registers only
    for line in asm:
        on_registers = "vpdpbusd" in line and "(%" not in line and f"%{register}" in line
        run = run + 1 if on_registers else 0
        longest = max(longest, run)
    assert longest >= peak.DOT4_CHAINS, longest
