"""Generated source, imported from a private cache folder: `load(source, stage)` and `make clean-cache`.

Stages 05 and later write Python source for their exact layer shapes and import it. It lives in
`$RESNET50_CACHE/codegen/<stage>-<hash>/resnet50_generated.py` (default ~/.cache/resnet50-ladder), in a
folder only its user can write to (common.paths.cache_dir), named by a hash of the source and of numba's
and Python's versions: a new generator, numba or Python gets a new folder, never a stale kernel.

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

from common import jit_cache
from common.paths import cache_base, cache_dir

FILE = "resnet50_generated.py"
FOLDER = re.compile(r"^\d\d_\w+-[0-9a-f]{20}$")
# What numba and we write in a folder: the source, its temporaries, numba's index/data files and our
# checksums of them, and numba's temporaries.
OURS = re.compile(r"^(resnet50_generated\.py|\.resnet50_generated\.\d+\.tmp|__pycache__)$")
OURS_IN_PYCACHE = re.compile(
    r"^(\.)?resnet50_generated[\w.-]*\.(nbi|nbc|pyc)((\.sha256)?(\.\d+\.\d+)?|\.tmp\.[0-9a-f]+)$"
)


def key(source: str) -> str:
    return hashlib.sha256(f"{source}{numba.__version__}{sys.version}".encode()).hexdigest()[:20]


def load(source: str, stage: str) -> ModuleType:
    """Import `source` (written by `stage`, e.g. "05_codegen") from the private cache, writing it first."""
    digest = key(source)
    folder = cache_dir("codegen", f"{stage}-{digest}")
    path = folder / FILE
    if not path.is_file() or path.read_bytes() != source.encode():
        tmp = folder / f".resnet50_generated.{os.getpid()}.tmp"
        tmp.write_text(source, encoding="utf-8")
        os.replace(tmp, path)  # atomic: another process sees the old file or the new one, never half
    jit_cache.install(folder)
    name = f"resnet50_generated_{stage}_{digest}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # numba's cache looks modules up by name
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


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
