"""common.isa reads the target numba compiles for, so NUMBA_CPU_NAME/NUMBA_CPU_FEATURES are honoured, and
generated code made for one target is never loaded for another."""

import json

import pytest

from common import isa
from tests.processes import last_json, run_python

DESCRIBE = r"""
import json
from common import codegen_cache, isa
print(json.dumps({**isa.target().as_dict(), "key": codegen_cache.key("the same source")}))
"""

HASWELL = {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ""}
NEHALEM = {"NUMBA_CPU_NAME": "nehalem", "NUMBA_CPU_FEATURES": ""}
x86_only = pytest.mark.skipif(isa.target().arch not in isa.X86, reason="names x86 CPUs for LLVM")


def target_in_child(env: dict) -> dict:
    run = run_python("-c", DESCRIBE, env=env)
    assert run.returncode == 0, run.stderr
    return last_json(run.stdout)


def host_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return {w for line in f if line.startswith("flags") for w in line.split(":")[1].split()}
    except OSError:
        return set()


def test_the_host_target_agrees_with_the_cpu_flags():
    target, flags = isa.target(), host_flags()
    if target.emulated or not flags:
        pytest.skip("numba compiles for an emulated target here, or /proc/cpuinfo is not readable")
    assert target.vector_floats == (16 if "avx512f" in flags else 8 if "avx" in flags else 4)
    assert target.registers == (32 if "avx512f" in flags else 16)
    assert target.fma == ("fma" in flags)
    assert target.vnni == ("avx512_vnni" in flags)
    assert target.bf16 == ("avx512_bf16" in flags)


@x86_only
@pytest.mark.parametrize(
    "env, want",
    [
        (HASWELL, {"name": "avx2", "vector_floats": 8, "registers": 16, "fma": True, "vnni": False}),
        ({"NUMBA_CPU_NAME": "nehalem", "NUMBA_CPU_FEATURES": ""}, {"name": "sse", "vector_floats": 4, "fma": False}),
        ({"NUMBA_CPU_NAME": "icelake-server", "NUMBA_CPU_FEATURES": ""},
         {"name": "avx512", "vector_floats": 16, "registers": 32, "vnni": True}),
        ({"NUMBA_CPU_NAME": "alderlake", "NUMBA_CPU_FEATURES": ""}, {"name": "avx2", "vnni": False, "avx_vnni": True}),
        ({"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "+avx,+avx2,+fma,+avx512f,+avx512vnni"},
         {"name": "avx512", "vnni": True}),
    ],
    ids=["haswell", "nehalem", "icelake-server", "alderlake", "explicit-features"],
)
def test_an_emulated_target_is_read_from_llvm_not_from_the_host(env, want):
    """LLVM's own answer for a named CPU (its features implied by the name), and explicit features win."""
    got = target_in_child(env)
    assert got["emulated"] is True
    assert {k: got[k] for k in want} == want, json.dumps(got)


@x86_only
def test_generated_code_for_another_target_lives_in_another_folder():
    """codegen_cache.key names the folder of generated code: the same source for two targets must not
    share one."""
    sse, avx2 = target_in_child(NEHALEM), target_in_child(HASWELL)
    assert sse["key"] != avx2["key"]
    assert target_in_child(HASWELL)["key"] == avx2["key"]  # and the same target finds its code again


TINY = r"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("tiny_cached", sys.argv[1])
module = importlib.util.module_from_spec(spec); sys.modules["tiny_cached"] = module; spec.loader.exec_module(module)
module.twice(1.0)
stats = module.twice.stats
print(json.dumps({"hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values())}))
"""


@x86_only
def test_numbas_own_cache_is_not_used_across_targets(tmp_path):
    """The same file's cached function: compiled once, loaded by the same target, compiled again for another
    (numba's index keys on the CPU name and features: its magic tuple)."""
    source = tmp_path / "tiny.py"
    source.write_text("from numba import njit\n\n@njit(cache=True)\ndef twice(x):\n    return 2 * x\n")

    def run(env: dict) -> dict:
        child = run_python("-c", TINY, str(source), env=env)
        assert child.returncode == 0, child.stderr
        return last_json(child.stdout)

    assert run(NEHALEM) == {"hits": 0, "misses": 1}
    assert run(NEHALEM) == {"hits": 1, "misses": 0}
    assert run(HASWELL) == {"hits": 0, "misses": 1}
    assert run(HASWELL) == {"hits": 1, "misses": 0}
