"""Generated source, imported from a private cache folder: `load(source, stage)` and `make clean-cache`.

Stages 05 and later write Python source for their exact layer shapes and import it. It lives in
`$RESNET50_CACHE/codegen/<stage>-<hash>/resnet50_generated.py` (default ~/.cache/resnet50-ladder), in a
folder only its user can write to (common.paths.cache_dir), named by a hash of the source, of numba's
and Python's versions and of the target numba compiles for: a new generator, numba, Python or CPU target
gets a new folder, never a stale kernel.

The file is compared with the source on every load, so a truncated, edited or corrupt copy is rewritten
(numba then recompiles it: numba 0.68 keys its cache on a hash of the file's content). A child process
compiles it (`compile_in_child`), never the process that runs it. numba keeps the compiled code in
__pycache__ next to it, every file checksummed by common.jit_cache.

`python -m common.codegen_cache --clean` removes the folders this project wrote there, and only those: a
folder with anything else in it is named and left alone.
"""

import argparse
import contextlib
import hashlib
import importlib.util
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import numba
import numpy as np
from tqdm import tqdm

from common import files, isa, jit_cache
from common.errors import CacheError
from common.paths import CACHE_ENV, ROOT, cache_base, cache_dir

FILE = "resnet50_generated.py"
FOLDER = re.compile(r"^\d\d_\w+-[0-9a-f]{20}$")
# What numba and we write in a folder: the source, the self-check's records (common.selfcheck), their
# temporaries (and an older version's), numba's index/data files and our checksums of them, and numba's
# temporaries.
OURS = re.compile(
    r"^(\.compile\.lock|resnet50_generated\.py|selfcheck-[0-9a-f]{20}\.npy|\.tmp-(resnet50_generated\.py|selfcheck-[0-9a-f]{20}\.npy)"
    r"\.\d+|\.resnet50_generated\.\d+\.tmp|__pycache__)$"
)
OURS_IN_PYCACHE = re.compile(
    r"^(\.)?resnet50_generated[\w.-]*\.(nbi|nbc|pyc)((\.sha256)?(\.\d+\.\d+)?|\.tmp\.[0-9a-f]+)$"
)


def key(source: str) -> str:
    """The folder's name: the source, numba's and Python's versions and the target numba compiles for
    (common.isa), so code made for one target is never loaded for another."""
    made_by = f"{numba.__version__}{sys.version}{isa.fingerprint()}"
    return hashlib.sha256(f"{source}{made_by}".encode()).hexdigest()[:20]


def load(source: str, stage: str, in_memory: bool = False) -> ModuleType:
    """Import `source` (written by `stage`, e.g. "05_codegen") from the private cache, writing it first.

    in_memory: compiled in this process and never cached, under a name of its own (also what a read-only
    cache folder gets)."""
    digest = key(source)
    folder = cache_dir("codegen", f"{stage}-{digest}")
    path = folder / FILE
    try:
        if not path.is_file() or path.read_bytes() != source.encode():
            files.write_atomic(path, source)  # another process sees the old file or the new one
    except OSError as e:
        raise CacheError(f"{folder}: cannot write the generated code there: {e.strerror or e}; "
                         f"free some space, make it writable, or set {CACHE_ENV}") from None  # fmt: skip
    if not in_memory and (not os.access(folder, os.W_OK) or not _pycache_writable(folder)):
        # numba would put the compiled code in ~/.cache/numba, where nothing checks it: keep it in memory.
        print(f"{folder}: cache folder is read-only: compiling in memory for this run", file=sys.stderr, flush=True)
        in_memory = True
    if in_memory:
        uncached = source.replace("cache=True", "cache=False")
        return _import(uncached, path, f"resnet50_generated_{stage}_{digest}_in_memory")
    jit_cache.install(folder)
    return _import(None, path, f"resnet50_generated_{stage}_{digest}")


# numba's cache keeps a caller's machine code with its own copies of the kernels it calls, linked in and
# optimised again with it, while the process that compiled them runs each kernel's own machine code
# (docs/numba-cache-bug.md). So the process that compiles is never the one that runs: a child compiles
# the forward pass into the cache, and every process, this one included, runs the code the cache holds.
COMPILE = r"""
import sys
from pathlib import Path
from common import codegen_cache
codegen_cache.compile_here(Path(sys.argv[1]), sys.argv[2])
"""


def signature(args: tuple) -> tuple:
    return tuple(numba.typeof(a) for a in args)


def forward_args() -> tuple:
    """Arguments of the types every generated forward pass takes (x, params, arena, scratch, b, first, last)."""
    one = np.zeros(1, np.float32)
    return np.zeros((1, 3, 224, 224), np.float32), one, one.copy(), one.copy(), 1, 0, 0


def in_cache(module: ModuleType) -> bool:
    """Does numba's cache next to the module hold its forward pass for the usual argument types? (Read from
    numba's index, checksummed by common.jit_cache, without loading any code.)"""
    forward = module.forward
    try:
        key = forward._cache._index_key(signature(forward_args()), forward.targetctx.codegen())
        return key in forward._cache._cache_file._load_index()
    except (AttributeError, OSError, EOFError, pickle.UnpicklingError):
        return False  # a numba whose cache looks different: compile


def compile_here(folder: Path, name: str) -> None:
    """The child's side: import the module under its name, compile its forward pass into the cache."""
    jit_cache.install(folder)
    module = _import(None, folder / FILE, name)
    module.forward.compile(signature(forward_args()))


def compile_in_child(module: ModuleType, label: str) -> float:
    """Compile the module's forward pass into numba's cache in a child process, with a clock running on a
    terminal; returns the seconds it took. Its errors are the child's, as one line. One process at a time
    compiles a folder (a lock file in it): another that wants the same code waits, then finds it cached."""
    folder = Path(module.__file__).parent
    start = time.perf_counter()
    with _compile_lock(folder):
        if not in_cache(module):  # else compiled by another process while this one waited
            _compile_in_child(folder, module, label)
    return time.perf_counter() - start


@contextmanager
def _compile_lock(folder: Path):
    try:
        import fcntl
    except ImportError:  # no flock (Windows): two processes may compile the same code, each correctly
        yield
        return
    try:
        handle = open(folder / ".compile.lock", "a+b")  # noqa: SIM115 (held for the block)
    except OSError:
        yield  # a folder we cannot write a lock into: load() has already chosen to compile in memory
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _compile_in_child(folder: Path, module: ModuleType, label: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    args = [sys.executable, "-c", COMPILE, str(folder), module.__name__]
    clock = tqdm(desc=f"compiling {label} (once per target)", bar_format="{desc}: {elapsed}", disable=None, leave=False)
    with tempfile.TemporaryFile() as err, clock:
        child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=ROOT)
        try:
            while child.poll() is None:
                time.sleep(0.5)
                clock.update(0)
        except BaseException:
            child.kill()
            child.wait()
            raise
        if child.returncode:
            err.seek(0)
            lines = [line for line in err.read().decode(errors="replace").splitlines() if line.strip()]
            errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b", line)]  # numba's are multi-line
            why = (errors or lines or [f"exit status {child.returncode}"])[-1]
            raise CacheError(f"{folder}: compiling the generated code failed: {why}")


def _import(source: str | None, path: Path, name: str) -> ModuleType:
    """The module `name` from `path` (or from `source`, compiled under that path's name), imported once."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # numba's cache looks modules up by name
    try:
        if source is None:
            spec.loader.exec_module(module)
        else:
            exec(compile(source, str(path), "exec"), module.__dict__)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _pycache_writable(folder: Path) -> bool:
    pycache = folder / "__pycache__"
    return not pycache.exists() or (pycache.is_dir() and os.access(pycache, os.W_OK))


def forget(folder: Path) -> None:
    """Remove numba's compiled code for a folder's module (its __pycache__): the next import compiles."""
    pycache = folder / "__pycache__"
    if pycache.is_dir() and not pycache.is_symlink():
        for p in pycache.iterdir():
            if _ours_in_pycache(p):
                p.unlink(missing_ok=True)


def _ours_in_pycache(path: Path) -> bool:
    return path.is_file() and not path.is_symlink() and bool(OURS_IN_PYCACHE.match(path.name))


def foreign_files(folder: Path) -> list[Path]:
    """What in a generated-code folder this project did not write (empty: the folder is ours to remove)."""
    found = []
    for path in folder.iterdir():
        if path.is_symlink() or not OURS.match(path.name):
            found.append(path)
        elif path.name == "__pycache__":
            if not path.is_dir():
                found.append(path)
                continue
            found += [p for p in path.iterdir() if not _ours_in_pycache(p)]
        elif not path.is_file():
            found.append(path)
    return found


def clean(base: Path | None = None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Remove every generated-code folder of ours; return (removed, [(left alone, why)])."""
    root = (base or cache_base()) / "codegen"
    removed: list[Path] = []
    kept: list[tuple[Path, str]] = []
    if not root.is_dir() or root.is_symlink():
        return removed, kept
    for folder in sorted(root.iterdir()):
        if folder.is_symlink() or not folder.is_dir() or not FOLDER.match(folder.name):
            kept.append((folder, "not a folder this project names"))
            continue
        foreign = foreign_files(folder)
        if foreign:
            kept.append((folder, f"holds {foreign[0].name!r}, which this project did not write"))
            continue
        try:
            pycache = folder / "__pycache__"
            if pycache.is_dir():
                for p in pycache.iterdir():
                    p.unlink()
                pycache.rmdir()
            for p in folder.iterdir():
                p.unlink()
            folder.rmdir()
        except OSError as e:  # a read-only or vanished cache: say so, go on with the rest
            kept.append((folder, f"could not be removed ({e.strerror or e})"))
            continue
        removed.append(folder)
    with contextlib.suppress(OSError):
        if not any(root.iterdir()):
            root.rmdir()
    return removed, kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.codegen_cache", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clean", action="store_true", help="remove the generated-code folders this project wrote")
    args = parser.parse_args(argv)
    if not args.clean:
        print(cache_base() / "codegen")
        return 0
    removed, kept = clean()
    for folder, why in kept:
        print(f"clean-cache: left {folder} alone: {why}", file=sys.stderr)
    print(f"clean-cache: removed {len(removed)} generated-code folder(s) from {cache_base() / 'codegen'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
