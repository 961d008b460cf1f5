"""Memory planned once, at construction: the lesson of stage 04, used by every stage after it.

- The weight pool: every tensor in one flat float32 array (conv weights channels-last), its offset by name.
- The arena: every tensor of the forward pass gets a place in one array; a place is reused as soon as the
  last step that reads its tensor has run (ping-pong buffers), each place as large as the largest
  tensor it holds, for `max_batch` images.
- Alignment: every buffer and every offset starts on a 64-byte cache line, so a 16-float vector load
  never straddles two lines.

`make ablate STAGE=04` switches the last two off (`reuse=False`: every tensor its own place;
`align=False`: every buffer a quarter line past a cache line) to measure what each buys.
"""

import math

import numpy as np

from common import spec

LINE = 16  # floats in a 64-byte cache line: every buffer and every tensor starts on one
MISALIGN = 4  # with align=False: floats past a line (16 bytes), so every other 16-float load straddles two


def channels_last(w: np.ndarray) -> np.ndarray:
    """(CO, CI, K, K) as stored -> (CO, K, K, CI): each kernel row's taps and channels contiguous."""
    return np.ascontiguousarray(w.transpose(0, 2, 3, 1))


def aligned(n: int, align: bool = True) -> int:
    """n rounded up to whole cache lines (n itself when not aligning)."""
    return -(-n // LINE) * LINE if align else n


def aligned_zeros(n: int, align: bool = True) -> np.ndarray:
    """n float32 zeros starting on a cache line (or, with align=False, deliberately MISALIGN floats past one)."""
    raw = np.zeros(n + 2 * LINE, np.float32)
    start = (-raw.ctypes.data % (4 * LINE)) // 4 + (0 if align else MISALIGN)
    return raw[start : start + n]


def pack_weights(weights, align: bool = True, conv_layout=None) -> tuple[np.ndarray, dict[str, int]]:
    """Every tensor in one flat float32 array; the offset of each by name. Conv weights are laid out by
    `conv_layout(conv, w)` (default: channels-last), once, here: nothing is rearranged per call."""
    arrays = {name: weights.load(name) for name in weights.names()}
    for c in spec.CONVS:
        w = arrays[c.weight]
        arrays[c.weight] = channels_last(w) if conv_layout is None else conv_layout(c, w)
    return pack_arrays(arrays, align)


def pack_arrays(arrays: dict[str, np.ndarray], align: bool = True) -> tuple[np.ndarray, dict[str, int]]:
    """Named arrays in one flat float32 array, each starting on a cache line; the offset of each by name."""
    offsets, total = {}, 0
    for name, a in arrays.items():
        offsets[name] = total
        total += aligned(a.size, align)
    params = aligned_zeros(total, align)
    for name, a in arrays.items():
        params[offsets[name] : offsets[name] + a.size] = a.reshape(-1)
    return params, offsets


def plan_arena(
    max_batch: int, align: bool = True, reuse: bool = True, floats: dict[str, int] | None = None, private=(),
    over: dict[str, str] | None = None,
) -> tuple[dict[str, int], int]:
    """A place in one arena for every tensor of the forward pass, reusing a place once its tensor is dead.

    Tensors are placed in the order they are made. A place is free for step i's output when the last step
    that reads its current tensor comes before i. Each place is as large as the largest tensor it holds.
    `floats` overrides a tensor's size per image (a stage with another layout); a `private` tensor gets a
    place of its own that no other tensor uses (what it holds beyond its own writes, e.g. a zero border,
    stays as it was). A tensor named in `over` takes the place of the tensor given for it, which the step
    that makes it reads for the last time (a conv whose store adds the residual element by element can write
    each output over the residual it has just read: the lines are in cache, none is fetched to be written).
    Returns the offset of every tensor (for max_batch images) and the arena's size.
    """
    floats = floats or {}
    sizes = {spec.INPUT: max_batch * aligned(floats.get(spec.INPUT, spec.IN_CHANNELS * spec.IMAGE_SIZE**2), align)}
    last_read = {}
    for i, step in enumerate(spec.STEPS):
        sizes[step.dst] = max_batch * aligned(floats.get(step.dst, math.prod(step.shape)), align)
        last_read[step.src] = i
        if step.residual:
            last_read[step.residual] = i
    places: list[list] = []  # [size, tensor in it]
    where: dict[str, int] = {}
    over = over or {}
    for i, tensor in enumerate(sizes):  # the input, then each step's output in execution order
        if tensor in over:
            under = over[tensor]
            if last_read.get(under) != i - 1 or under in private or tensor in private:
                raise ValueError(f"{tensor} cannot take {under}'s place: it is read later, or has a place of its own")
            j = where[tensor] = where[under]
            places[j] = [max(places[j][0], sizes[tensor]), tensor]
            continue
        free = [
            j
            for j, (_, holder) in enumerate(places)
            if last_read.get(holder, len(spec.STEPS)) < i - 1 and holder not in private
        ]
        if free and reuse and tensor not in private:
            j = max(free, key=lambda j: places[j][0])
            places[j] = [max(places[j][0], sizes[tensor]), tensor]
        else:
            j = len(places)
            places.append([sizes[tensor], tensor])
        where[tensor] = j
    starts = np.cumsum([0] + [size for size, _ in places])
    return {tensor: int(starts[j]) for tensor, j in where.items()}, int(starts[-1])
