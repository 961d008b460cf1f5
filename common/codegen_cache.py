"""Generated source, imported from a private cache folder: `load(source, stage)` and `make clean-cache`.

Stages 05 and later write Python source for their exact layer shapes and import it. It lives in
`$RESNET50_CACHE/codegen/<stage>-<hash>/resnet50_generated.py` (default ~/.cache/resnet50-ladder), in a
folder only its user can write to (common.paths.cache_dir), named by a hash of the source, of numba's
and Python's versions and of the target numba compiles for: a new generator, numba, Python or CPU target
gets a new folder, never a stale kernel.

The file is compared with the source on every load, so a truncated, edited or corrupt copy is rewritten
(numba then recompiles it: its own cache follows the file's timestamp). numba keeps the compiled code in
__pycache__ next to it, every file checksummed by common.jit_cache.

`python -m common.codegen_cache --clean` removes the folders this project wrote there, and only those: a
folder with anything else in it is named and left alone.
"""

import argparse
import hashlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from types import ModuleType

import numba

from common import files, isa, jit_cache
from common.errors import CacheError
from common.paths import CACHE_ENV, cache_base, cache_dir

FILE = "resnet50_generated.py"
FOLDER = re.compile(r"^\d\d_\w+-[0-9a-f]{20}$")
# What numba and we write in a folder: the source, the self-check's records (common.selfcheck), their
# temporaries (and an older version's), numba's index/data files and our checksums of them, and numba's
# temporaries.
OURS = re.compile(
    r"^(resnet50_generated\.py|selfcheck-[0-9a-f]{20}\.npy|\.tmp-(resnet50_generated\.py|selfcheck-[0-9a-f]{20}\.npy)"
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


def load(source: str, stage: str, fresh: bool = False) -> ModuleType:
    """Import `source` (written by `stage`, e.g. "05_codegen") from the private cache, writing it first.

    fresh: import it again under a new name (after `forget`, so numba compiles it anew)."""
    digest = key(source)
    folder = cache_dir("codegen", f"{stage}-{digest}")
    path = folder / FILE
    try:
        if not path.is_file() or path.read_bytes() != source.encode():
            files.write_atomic(path, source)  # another process sees the old file or the new one
    except OSError as e:
        raise CacheError(f"{folder}: cannot write the generated code there: {e.strerror or e}; "
                         f"free some space, make it writable, or set {CACHE_ENV}") from None  # fmt: skip
    if not os.access(folder, os.W_OK) or not _pycache_writable(folder):
        # numba would put the compiled code in ~/.cache/numba, where nothing checks it: keep it in memory.
        print(f"{folder}: cache folder is read-only: compiling in memory for this run", file=sys.stderr, flush=True)
        in_memory = source.replace("cache=True", "cache=False")
        return _import(in_memory, path, f"resnet50_generated_{stage}_{digest}_in_memory")
    jit_cache.install(folder)
    name = f"resnet50_generated_{stage}_{digest}"
    if fresh:
        _fresh[name] = _fresh.get(name, 0) + 1
        name += f"_again{_fresh[name]}"
    return _import(None, path, name)


_fresh: dict[str, int] = {}


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
        pycache = folder / "__pycache__"
        if pycache.is_dir():
            for p in pycache.iterdir():
                p.unlink()
            pycache.rmdir()
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
        removed.append(folder)
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
