"""The plumbing that turns a generator into a stage (05 and later), so a stage file holds only its lesson.

A generating stage writes Python source for ResNet-50's exact shapes; `GeneratedResNet50` does the rest,
the same for every such stage: pack the weight pool and plan the arena (common.arena, 04's lesson),
import the source from the private cache (common.codegen_cache), and offer the stage contract
(`__call__`, `layer_steps` for the profiler). A stage subclasses it and supplies:

    generate(tensor_at, weight_at) -> str   the module's source, with `forward(x, params, arena, scratch,
                                            b, first, last)` running steps first..last-1
    conv_weights(conv, w) -> array           the layout of one conv's weights in the pool (default: 04's)
    scratch_floats() -> int                  the scratch buffer's size
and may supply pack(weights) (the whole pool), tensor_floats(), private() and in_place() (the arena's plan),
and set `whole_batch_from` (a step's name) to have a batch run image by image up to that step (08 on).

Every kernel is compiled (or loaded from numba's cache) in the constructor, which records the seconds spent
compiling in `compile_s`; code loaded from the cache is checked before it is used (common.selfcheck).
`warm_cache` compiles several stages' code ahead, in parallel (make test's background warm-up). A stage
whose tensors are not float32 (10: bytes) views the float32 arena and pool by type (`arena_view`,
`pool_view` with a dtype) and supplies its own judge (`_judge`).

The helpers below keep the generated code reading like code a person wrote: no `i * 1`, no `+ 0`, no `// 1`
(tests/test_generated_code.py holds every generating stage to it).
"""

import inspect
import threading
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numba
import numpy as np

from common import codegen_cache, selfcheck, spec
from common.arena import aligned_zeros, channels_last, pack_weights, plan_arena
from common.errors import LadderError
from common.inputs import check_batch, check_max_batch, check_threads
from common.timing import compile_clock


def times(expr: str, k: int) -> str:
    """`expr * k`, written as a person would: 'oh' for k=1, '0' for k=0, '(j + 1) * 64' for a sum."""
    if k == 0 or expr == "0":
        return "0"
    if k == 1:
        return expr
    return f"({expr}) * {k}" if " + " in expr else f"{expr} * {k}"


def plus(*terms: str | int) -> str:
    """A sum with its zero terms left out and its numbers added up: plus('i', 0) -> 'i'."""
    number = sum(t for t in terms if isinstance(t, int))
    names = [t for t in terms if isinstance(t, str) and t != "0"]
    if number:
        names.append(str(number))
    return " + ".join(names) or "0"


def split(index: str, count: int | str) -> tuple[str, str]:
    """(index // count, index % count), written as a person would: ('i', '0') for a count of 1."""
    if count == 1:
        return index, "0"
    n = f"({count})" if isinstance(count, str) and " " in count else str(count)
    return f"{index} // {n}", f"{index} % {n}"


def docstring(text: str, indent: int = 4) -> list[str]:
    """A generated function's docstring, wrapped to lines of at most 100 characters as a person writes it."""
    import textwrap

    pad = " " * indent
    lines = textwrap.wrap(f'"""{text}"""', 100 - indent)
    return [pad + line for line in lines]


def local(name: str) -> str:
    """A weight's name as a Python name: 'layer1.0.bn1.weight' -> 'layer1_0_bn1_weight'."""
    return name.replace(".", "_")


def activation(tensor: str) -> str:
    """An activation's name as a Python name: 'layer1.0.conv1' -> 'x_layer1_0_conv1' (x_maxpool, not the
    maxpool kernel's name)."""
    return f"x_{local(tensor)}"


def arena_view(tensor: str, at: int, shape: tuple[int, ...], dtype: str | None = None) -> str:
    """The view of the arena a tensor lives in: `b` images per tensor planned, `n` in this call. With a
    dtype ('uint8'), the same bytes as that type (the shape counts its elements; the arena counts floats)."""
    size = int(np.prod(shape)) * (np.dtype(dtype).itemsize if dtype else 4) // 4
    span = f"arena[: n * {size}]" if at == 0 else f"arena[b * {at} : b * {at} + n * {size}]"
    as_type = f".view(np.{dtype})" if dtype else ""
    return f"    {activation(tensor)} = {span}{as_type}.reshape(n, {', '.join(map(str, shape))})"


def pool_view(name: str, at: int, shape: tuple[int, ...], dtype: str | None = None) -> str:
    """The view of the weight pool a tensor lives in (with a dtype, its bytes as that type: the pool counts
    floats, the shape that type's elements)."""
    size = int(np.prod(shape)) * (np.dtype(dtype).itemsize if dtype else 4) // 4
    view = f"params[{at} : {at + size}]" + (f".view(np.{dtype})" if dtype else "")
    if len(shape) > 1:
        view += f".reshape({', '.join(map(str, shape))})"
    return f"    {local(name)} = {view}"


class ShapesOnly:
    """A stand-in weight store of zeros with ResNet-50's shapes: enough to generate a stage's source (the
    offsets and sizes in it depend on shapes only), for `make codegen` without a store."""

    def names(self) -> list[str]:
        return list(spec.tensor_shapes())

    def load(self, name: str) -> np.ndarray:
        return np.zeros(spec.tensor_shapes()[name], np.float32)


_source_only = threading.local()


@contextmanager
def source_only():
    """Constructions inside the block generate their source and stop there: nothing compiled or loaded."""
    _source_only.active = True
    try:
        yield
    finally:
        _source_only.active = False


class GeneratedResNet50:
    """ResNet-50 from a stage's generated source; see the module's docstring."""

    threads: int | None = None  # a multi-threaded stage sets it (numba's threads during its calls)
    # Why this machine cannot run the stage at all (11 without AMX): its code is never compiled here, since
    # LLVM stops the process that asks for an instruction its target lacks. Its source can still be printed.
    unavailable: str | None = None
    # A stage that names a step here runs a batch of several images through the steps before it one image at
    # a time, in an arena of its own planned for one image, and from that step on all together. Early on the
    # activations are large and the weights small: one image's tensors stay in L3 (layer1's are 3.2 MB each,
    # eight images' 26 MB), while later layers, with large weights, read each weight once for the batch.
    whole_batch_from: str | None = None

    def __init__(self, weights, max_batch: int = 1, threads: int | None = None) -> None:
        self.max_batch = max_batch = check_max_batch(max_batch)
        if threads is not None:
            self.threads = check_threads(threads, numba.config.NUMBA_NUM_THREADS)
        names = [s.name for s in spec.STEPS]
        if self.whole_batch_from and self.whole_batch_from not in names:
            raise LadderError(f"whole_batch_from: no step {self.whole_batch_from!r} in ResNet-50 (spec.STEPS)")
        self._split = names.index(self.whole_batch_from) if self.whole_batch_from else 0
        self.params, weight_at = self.pack(weights)
        self.tensor_at, arena_size = plan_arena(
            max_batch, floats=self.tensor_floats(), private=self.private(), over=self.in_place()
        )
        self.arena = aligned_zeros(arena_size)
        # The same plan for one image (each place is max_batch images of its tensors: it divides exactly).
        self._image_arena = aligned_zeros(arena_size // max_batch) if self._split and max_batch > 1 else None
        self._crossing = self._crossing_tensors() if self._image_arena is not None else {}
        self.scratch = aligned_zeros(self.scratch_floats())
        per_image = {tensor: at // max_batch for tensor, at in self.tensor_at.items()}
        stage = Path(inspect.getfile(type(self))).parent.name
        header = f"# Generated by stages/{stage}/resnet50.py: ResNet-50, every size a literal. Edit the generator.\n"
        self.source = header + self.generate(per_image, weight_at)
        if getattr(_source_only, "active", False):
            return
        if self.unavailable:
            raise LadderError(f"stages/{stage}: {self.unavailable}")
        self._weights = weights
        self.compile_s = 0.0  # seconds of compiling for this construction (0 when the cache held the code)
        with compile_clock() as clock:
            self.from_cache = self._build(stage)
        self.compile_s += clock.seconds  # compiled in this process: only a read-only cache does that

    def _build(self, stage: str, in_memory: bool = False) -> bool:
        """Import the generated code, have it compiled into numba's cache by a child process when the cache
        does not hold it (codegen_cache.compile_in_child: this process then runs exactly what every later one
        loads), load it and check it (common.selfcheck). Code from the cache that computes anything but what
        was judged is thrown away: this process compiles its own in memory, the next one fills the cache
        again. Returns whether the cache held the code."""
        module = codegen_cache.load(self.source, stage, in_memory=in_memory)
        folder = Path(module.__file__).parent
        in_memory = module.__name__.endswith("_in_memory")
        cached = not in_memory and codegen_cache.in_cache(module)
        if not in_memory and not cached:
            self.compile_s += codegen_cache.compile_in_child(module, stage)
            selfcheck.forget(folder)  # records of code that is gone
        self.forward = module.forward
        logits = self._probe()  # loads every kernel (in memory: compiles them)
        why = selfcheck.verify(logits, selfcheck.record_path(folder, self.params), self._judge, record=not in_memory)
        if why is None:
            return cached
        if in_memory or not cached:  # compiled afresh and still wrong: not a cache problem
            raise LadderError(f"{stage}: generated code disagrees with the judge: {why}")
        selfcheck.say(str(folder), why)
        codegen_cache.forget(folder)
        selfcheck.forget(folder)
        return self._build(stage, in_memory=True)

    def _probe(self) -> np.ndarray:
        """The logits of selfcheck's fixed input, on one thread (the same bits on any thread count)."""
        before = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            self._run(selfcheck.probe(), 0, len(spec.STEPS))
        finally:
            numba.set_num_threads(before)
        return self._logits(1)

    def _judge(self, logits: np.ndarray) -> str | None:
        """Why these logits of the check input are wrong by ONNX Runtime's, or None."""
        from common.reference import Reference, compare

        verdict = compare(logits, Reference(self._weights, max_batch=1)(selfcheck.probe()))
        return None if verdict.ok else f"its logits for the check input disagree with ONNX Runtime's ({verdict.reason})"

    # What a stage supplies.
    def generate(self, tensor_at: dict[str, int], weight_at: dict[str, int]) -> str:
        raise NotImplementedError

    def conv_weights(self, conv: spec.Conv, w: np.ndarray) -> np.ndarray:
        return channels_last(w)

    def pack(self, weights) -> tuple[np.ndarray, dict[str, int]]:
        """The weight pool and each tensor's offset in it (default: every stored tensor, convs laid out by
        `conv_weights`)."""
        return pack_weights(weights, conv_layout=self.conv_weights)

    def tensor_floats(self) -> dict[str, int] | None:
        """Floats per image of each activation, where a stage's layout needs more than C*H*W (None: none)."""
        return None

    def private(self) -> set[str]:
        """Activations that need a place of their own in the arena (e.g. a zero border that must stay)."""
        return set()

    def in_place(self) -> dict[str, str]:
        """Activations written over another that their step reads for the last time: {tensor: the one whose
        place it takes} (common.arena.plan_arena)."""
        return {}

    def scratch_floats(self) -> int:
        raise NotImplementedError

    # The stage contract.
    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x: (N, 3, 224, 224) float32, C-contiguous -> logits (N, 1000) float32."""
        x = check_batch(x, self.max_batch)
        self._set_threads()
        self._run(x, 0, len(spec.STEPS))
        return self._logits(len(x))

    def layer_steps(self, x: np.ndarray) -> list:
        """The forward pass as (layer name, step) pairs: calling the steps in order returns the logits
        from the last one. The profiler times each step; `__call__` runs them all in one call."""
        x = check_batch(x, self.max_batch)
        self._set_threads()
        steps = []
        for i, step in enumerate(spec.STEPS):
            run = partial(self._run, x, i, i + 1)
            steps.append((step.name, run))
        last_name, last_run = steps[-1]
        steps[-1] = (last_name, lambda: (last_run(), self._logits(len(x)))[1])
        return steps

    def _run(self, x: np.ndarray, first: int, last: int) -> None:
        if self._image_arena is not None and len(x) > 1 and first == 0 and last >= self._split:
            for i in range(len(x)):
                self.forward(x[i : i + 1], self.params, self._image_arena, self.scratch, 1, 0, self._split)
                for tensor, size in self._crossing.items():  # into image i's place in the batch's arena
                    at = self.tensor_at[tensor] // self.max_batch
                    self.arena[self.tensor_at[tensor] + i * size :][:size] = self._image_arena[at : at + size]
            first = self._split
        self.forward(x, self.params, self.arena, self.scratch, self.max_batch, first, last)

    def _crossing_tensors(self) -> dict[str, int]:
        """The tensors made before `whole_batch_from` and read from it on, and their floats per image."""
        made_before = {spec.INPUT} | {s.dst for s in spec.STEPS[: self._split]}
        read_after = {t for s in spec.STEPS[self._split :] for t in (s.src, s.residual) if t}
        floats = self.tensor_floats() or {}
        return {t: floats.get(t, int(np.prod(spec.STEP_BY_NAME[t].shape))) for t in sorted(made_before & read_after)}

    def _set_threads(self) -> None:
        if self.threads is not None:
            numba.set_num_threads(self.threads)

    def _logits(self, n: int) -> np.ndarray:
        start = self.tensor_at[spec.LOGITS]
        return self.arena[start : start + n * spec.NUM_CLASSES].reshape(n, spec.NUM_CLASSES).copy()


def warm_cache(infos: list, workers: int, stop: threading.Event | None = None) -> list[str]:
    """Compile the generated code of these stages (those built on GeneratedResNet50) into the cache, up to
    `workers` at a time, each in a child process as a construction would (codegen_cache.compile_in_child;
    its lock makes a construction that wants the same code wait for it rather than compile it again). For
    a run about to build them all (`make test`'s parallel workers): returns the stages compiled. Once `stop`
    is set, no further compile starts."""
    from concurrent.futures import ThreadPoolExecutor

    from common import stages

    jobs = []
    for info in infos:
        stage_class = getattr(stages.load(info), "ResNet50", None)
        if not (isinstance(stage_class, type) and issubclass(stage_class, GeneratedResNet50)):
            continue
        if stage_class.unavailable:
            continue
        with source_only():
            source = stage_class(ShapesOnly()).source  # the source depends on the shapes alone
        module = codegen_cache.load(source, info.name)
        if not module.__name__.endswith("_in_memory") and not codegen_cache.in_cache(module):
            jobs.append((module, info.name))

    def compile_one(module, label: str) -> str | None:
        if stop is not None and stop.is_set():
            return None
        codegen_cache.compile_in_child(module, label)
        return label

    with ThreadPoolExecutor(max(1, workers)) as pool:
        done = [future.result() for future in [pool.submit(compile_one, *job) for job in jobs]]
    return [label for label in done if label]
