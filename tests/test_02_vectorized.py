"""Stage 02's claim: its conv kernel runs on packed FMA instructions; stage 01's does not."""

import numpy as np

from common import stages
from tests.asm import PACKED_FMA, SCALAR_MUL_ADD, assembly

X = np.zeros((1, 8, 5, 5), np.float32)


def test_vectorized_conv_kernel_holds_packed_fma_on_vector_registers():
    conv = stages.load("02").conv2d
    asm = assembly(conv, X, np.zeros((4, 3, 3, 8), np.float32), 1, 1)
    packed = PACKED_FMA.findall(asm)
    assert len(packed) >= 4, "no vfmadd...ps on ymm/zmm registers in 02's conv2d"


def test_naive_conv_kernel_is_scalar():
    conv = stages.load("01").conv2d
    asm = assembly(conv, X, np.zeros((4, 8, 3, 3), np.float32), 1, 1)
    assert not PACKED_FMA.findall(asm)
    assert SCALAR_MUL_ADD.findall(asm), "expected scalar vmulss/vaddss in 01's conv2d"
