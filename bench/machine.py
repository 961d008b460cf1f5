"""What machine a benchmark ran on, and the environment settings that would skew it (reported, not hidden)."""

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from common import isa
from common.paths import ROOT

FLAGS_OF_INTEREST = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
)
PACKAGES = ("numpy", "numba", "llvmlite", "onnxruntime", "onnx", "torch", "openvino", "threadpoolctl", "matplotlib")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), which can be fewer than the machine has."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_info() -> dict:
    model, flags, family, number = platform.processor() or "unknown", set(), None, None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name":
                model = value.strip()
            elif key == "flags":
                flags = set(value.split())
            elif key == "cpu family" and family is None:
                family = value.strip()
            elif key == "model" and number is None:
                number = value.strip()
    except OSError:
        pass
    logical = os.cpu_count() or 1
    usable = usable_cores()
    return {
        "model": model,
        "family": family,
        "model_number": number,
        "flags": [f for f in FLAGS_OF_INTEREST if f in flags],
        "logical_cpus": logical,
        "usable_cpus": usable,
        "arch": platform.machine(),
    }


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def blas_info() -> list[dict]:
    from threadpoolctl import threadpool_info

    keep = ("user_api", "internal_api", "version", "num_threads", "architecture", "threading_layer")
    return [{k: lib.get(k) for k in keep if lib.get(k) is not None} for lib in threadpool_info()]


def git_commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}{'+changes' if dirty else ''}" if sha else "unknown"


def environment_traps(cores: int, numba_threads: int) -> list[str]:
    """Settings that make this machine's numbers differ from what its hardware can do."""
    env = os.environ
    traps = []
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if env.get(var):
            traps.append(
                f"{var}={env[var]} picks OpenBLAS's kernel or blocking by hand, not for this CPU; "
                "the numpy peer and the sgemm line may be lower than they should"
            )
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        if env.get(var, "").isdigit() and int(env[var]) < cores:
            traps.append(f"{var}={env[var]} caps a thread pool below the {cores} usable cores")
    if numba_threads < cores:
        traps.append(f"numba has {numba_threads} threads (NUMBA_NUM_THREADS) for {cores} usable cores")
    if (os.cpu_count() or 1) > cores:
        traps.append(f"this process may use {cores} of the {os.cpu_count()} CPUs (affinity or container limit)")
    if env.get("NUMBA_DISABLE_JIT", "0") not in ("", "0"):
        traps.append("NUMBA_DISABLE_JIT is set: every numba stage runs as plain Python")
    if env.get("NUMBA_SLP_VECTORIZE"):
        traps.append(f"NUMBA_SLP_VECTORIZE={env['NUMBA_SLP_VECTORIZE']} changes how numba's kernels vectorize")
    governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    if governor.exists() and governor.read_text().strip() not in ("performance", "schedutil"):
        traps.append(f"CPU frequency governor is {governor.read_text().strip()!r}")
    return traps


def describe(numba_threads: int) -> dict:
    cpu = cpu_info()
    return {
        "cpu": cpu,
        "memory_gib": memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "versions": versions(),
        "blas": blas_info(),
        "numba_threading_layer": None,  # filled in once numba has run a parallel kernel
        "numba_threads": numba_threads,
        "isa": isa.target().as_dict(),  # what the stages were compiled for (NUMBA_CPU_NAME may emulate another)
        "git_commit": git_commit(),
        "environment_traps": environment_traps(cpu["usable_cpus"], numba_threads),
        "environment": {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS_", "OMP_", "MKL_", "NUMBA_"))},
    }
