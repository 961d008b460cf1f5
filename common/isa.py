"""What the machine numba compiles for can do: vector width, vector registers, FMA, VNNI, BF16.

Asked of the LLVM target numba itself uses (its CPU name and feature string, so NUMBA_CPU_NAME and
NUMBA_CPU_FEATURES are honoured: `NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=""` is an AVX2 machine here),
not of /proc/cpuinfo. The vector width and FMA are read from the machine code LLVM emits for that target
for a few lines of IR (a 16-float multiply-add: one zmm instruction, two on ymm, four on xmm, or a call);
VNNI and BF16 from the feature string, or, where numba passes none (a named CPU with NUMBA_CPU_FEATURES=""),
from whether LLVM can select the instruction for that CPU at all (asked in a child process: LLVM aborts
the process that asks for an instruction its target lacks).

The generators of stages 05 and later size their vectors, panels and tiles from `target()`; the bench and
the results record it; the generated-code cache keys on `fingerprint()`, so code made for one target is
never loaded for another.
"""

import functools
import platform
import re
import subprocess
import sys
from dataclasses import asdict, dataclass

X86 = ("x86_64", "amd64", "i386", "i686")


@dataclass(frozen=True)
class Target:
    cpu: str  # LLVM's name for the CPU numba compiles for ("znver4", "haswell")
    features: str  # the feature string numba passes to LLVM ("" : those of the CPU's name)
    arch: str  # "x86_64", "aarch64", ...
    vector_floats: int  # fp32 lanes in one vector register (16 zmm, 8 ymm, 4 xmm or NEON, 1 none)
    registers: int  # vector registers the tile can use (32 with AVX-512 or on arm64, 16 with AVX/SSE)
    fma: bool  # a fused multiply-add instruction
    vnni: bool  # AVX-512 VNNI: vpdpbusd, 64 u8 x s8 multiply-adds into 16 int32 lanes
    avx_vnni: bool  # the same on ymm registers (AVX-VNNI, e.g. Intel's consumer cores without AVX-512)
    bf16: bool  # AVX-512 BF16
    emulated: bool  # NUMBA_CPU_NAME or NUMBA_CPU_FEATURES chose the target, not the host

    @property
    def name(self) -> str:
        """'avx512', 'avx2', 'neon', 'sse' or 'scalar': the vector unit the code is compiled for."""
        if self.arch in X86:
            return {16: "avx512", 8: "avx2" if self.fma else "avx", 4: "sse"}.get(self.vector_floats, "scalar")
        return "neon" if self.arch in ("aarch64", "arm64") and self.vector_floats == 4 else "scalar"

    def describe(self) -> str:
        extras = [n for n, on in (("FMA", self.fma), ("VNNI", self.vnni), ("AVX-VNNI", self.avx_vnni),
                                  ("BF16", self.bf16)) if on]  # fmt: skip
        what = f"{self.name} ({self.vector_floats} floats x {self.registers} registers{', ' if extras else ''}"
        return what + ", ".join(extras) + f"), LLVM CPU {self.cpu}" + (" (emulated target)" if self.emulated else "")

    def as_dict(self) -> dict:
        return {**asdict(self), "name": self.name, "describe": self.describe()}


def _numba_target() -> tuple[str, str]:
    """(CPU name, feature string) exactly as numba's JIT passes them to LLVM."""
    import llvmlite.binding as ll
    from numba.core import codegen, config

    cpu = ll.get_host_cpu_name() if config.CPU_NAME is None else config.CPU_NAME
    features = codegen.get_host_cpu_features() if config.CPU_FEATURES is None else config.CPU_FEATURES
    return cpu, features


_PROBE_IR = """
define void @probe(<16 x float>* %a, <16 x float>* %b, <16 x float>* %c) {
  %x = load <16 x float>, <16 x float>* %a
  %y = load <16 x float>, <16 x float>* %b
  %z = load <16 x float>, <16 x float>* %c
  %r = call <16 x float> @llvm.fma.v16f32(<16 x float> %x, <16 x float> %y, <16 x float> %z)
  store <16 x float> %r, <16 x float>* %c
  %s = fadd <16 x float> %x, %y
  store <16 x float> %s, <16 x float>* %a
  ret void
}
declare <16 x float> @llvm.fma.v16f32(<16 x float>, <16 x float>, <16 x float>)
"""

# An instruction LLVM can only select where the target has it; asked in a child process (see above).
# argv: CPU name, features, lanes (16: AVX-512 VNNI on zmm; 8: on ymm, which AVX-VNNI also has).
_SELECTABLE = """
import sys
import llvmlite.binding as ll
ll.initialize_native_target(); ll.initialize_native_asmprinter()
v = f"<{sys.argv[3]} x i32>"
ir = (f"define {v} @f({v} %a, {v} %b, {v} %c) {{\\n"
      f"  %r = call {v} @vnni({v} %a, {v} %b, {v} %c)\\n  ret {v} %r\\n}}\\n"
      f"declare {v} @vnni({v}, {v}, {v})\\n").replace("@vnni", f"@llvm.x86.avx512.vpdpbusd.{32 * int(sys.argv[3])}")
tm = ll.Target.from_default_triple().create_target_machine(cpu=sys.argv[1], features=sys.argv[2], opt=2)
print("ok" if "vpdpbusd" in tm.emit_assembly(ll.parse_assembly(ir)) else "no")
"""


def _assembly(cpu: str, features: str) -> str:
    import llvmlite.binding as ll

    ll.initialize_native_target()
    ll.initialize_native_asmprinter()
    tm = ll.Target.from_default_triple().create_target_machine(cpu=cpu, features=features, opt=2)
    module = ll.parse_assembly(_PROBE_IR)
    module.verify()
    return tm.emit_assembly(module)


def _selectable(cpu: str, features: str, lanes: int) -> bool:
    try:
        out = subprocess.run([sys.executable, "-c", _SELECTABLE, cpu, features, str(lanes)], capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip() == "ok"


def _has(features: str, name: str) -> bool:
    return f"+{name}" in features.split(",")


def compiles_for(feature: str) -> bool:
    """Whether numba's target names this LLVM feature ("amx-int8"): its feature string, as numba passes it."""
    return _has(_numba_target()[1], feature)


@functools.cache
def host_matrix_units() -> tuple[str, ...]:
    """The host CPU's matrix units (Intel AMX: tiles of int8 or bf16 multiply-adds, 16 rows x 64 bytes by
    64 bytes x 16 columns in one instruction), whatever numba compiles for: no stage uses them and the bench's
    peaks do not measure them, but an engine may (OpenVINO's int8 does)."""
    from numba.core import codegen

    features = codegen.get_host_cpu_features()
    return tuple(name for name in ("amx-int8", "amx-bf16") if _has(features, name))


@functools.cache
def target() -> Target:
    """The target numba compiles for in this process (asked once: numba reads its settings at import)."""
    from numba.core import config

    cpu, features = _numba_target()
    arch = platform.machine().lower()
    asm = _assembly(cpu, features)
    if arch in X86:
        ops = [line for line in asm.splitlines() if re.search(r"\bv?(fmadd\w*|add)ps\b", line)]
        regs = set(re.findall(r"%([xyz])mm\d+", "\n".join(ops)))
        width = 16 if "z" in regs else 8 if "y" in regs else 4 if "x" in regs else 1
        fma = bool(re.search(r"\bvfn?madd\d*ps\b", asm))
        registers = 32 if width == 16 else 16
    else:  # arm64: NEON's 128-bit registers, 32 of them, fused multiply-add in the base ISA
        width = 4 if re.search(r"\bfml[as]\s+v\d+\.4s|\bfmla\b", asm) or "v0.4s" in asm else 1
        fma, registers = width == 4, 32
    explicit = bool(features)
    if arch in X86 and width == 16:
        vnni = _has(features, "avx512vnni") if explicit else _selectable(cpu, features, 16)
        bf16 = _has(features, "avx512bf16") if explicit else False
    else:
        vnni = bf16 = False
    avx_vnni = arch in X86 and width >= 8 and (
        _has(features, "avxvnni") if explicit else not vnni and _selectable(cpu, features, 8)
    )
    emulated = config.CPU_NAME is not None or config.CPU_FEATURES is not None
    return Target(cpu, features, arch, width, registers, fma, vnni, avx_vnni, bf16, emulated)


def fingerprint() -> str:
    """One string for the target's code: the CPU name and features numba compiles with."""
    cpu, features = _numba_target()
    return f"{platform.machine()}/{cpu}/{features}"


if __name__ == "__main__":
    print(target().describe())
