"""Reading a stage kernel's machine code. numba cannot show the assembly of code loaded from its on-disk cache,
so the kernel is compiled afresh from its Python source with the stage's own options (minus the cache)."""

import re

import numba

PACKED_FMA = re.compile(r"vfmadd\d{3}ps\s+[^\n]*%(?:[yz]mm)")
SCALAR_FMA = re.compile(r"vfmadd\d{3}ss")
SCALAR_MUL_ADD = re.compile(r"v(?:mul|add)ss")


def assembly(dispatcher, *args) -> str:
    fresh = numba.jit(**dispatcher.targetoptions)(dispatcher.py_func)
    fresh(*args)
    return fresh.inspect_asm(fresh.signatures[0])
