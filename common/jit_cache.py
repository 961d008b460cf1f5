"""numba's on-disk cache, with a checksum for every file: damage means a recompile, never a wrong answer.

numba keeps compiled kernels next to their source (`cache=True`): an index (.nbi) per function and a data
file (.nbc) per compiled signature, both pickles, with no checksum. Damage numba does not notice: a
truncated file raised an UnpicklingError from the first call, and 64 flipped bytes inside a forward
function's machine code changed the top-1 class, silently, on every run.

So, for this project's caches (under the project and under its private cache folder), `install()` wraps
numba's own reading and writing of those files:
- when numba has written a cache file, its sha256 goes into a sidecar, `<file>.sha256`, written atomically;
- before numba reads one, its bytes are checked against the sidecar. A file that does not match, or has no
  sidecar (written before this existed, or cut off between the two writes), is treated as absent: numba
  compiles that function again and rewrites the file and its sidecar. One line on stderr says so.

What this does not catch: a file damaged together with its sidecar so that the two agree (deliberate
tampering; the cache folder is private to its user for that reason), and damage to code already loaded in
a running process.
"""

import hashlib
import os
import sys
import threading
from pathlib import Path

_lock = threading.Lock()
_roots: list[Path] = []
_warned: set[str] = set()
SUFFIX = ".sha256"


def sidecar(path: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(path)}{SUFFIX}")


def record(path: str | os.PathLike) -> None:
    """Write the sidecar of a cache file numba has just written."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    side = sidecar(path)
    tmp = side.with_name(f".{side.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(digest + "\n", encoding="ascii")
    os.replace(tmp, side)


def problem(path: str | os.PathLike) -> str | None:
    """Why a cache file must not be used, or None when its bytes are what was written."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None  # absent: numba handles that itself
    try:
        recorded = sidecar(path).read_text(encoding="ascii").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return "no checksum recorded for it"
    if hashlib.sha256(data).hexdigest() != recorded:
        return "its checksum does not match the one recorded when it was written (damaged)"
    return None


def _ours(cache_path: str) -> bool:
    path = Path(cache_path).resolve()
    return any(path.is_relative_to(root) for root in _roots)


def _say(path: str, why: str) -> None:
    """Once per file and reason: numba reads an index twice when it compiles (to look up, then to add)."""
    key = f"{path}:{why}"
    if key in _warned:
        return
    _warned.add(key)
    print(f"{path}: numba cache file not used: {why}; compiling again", file=sys.stderr, flush=True)


def install(*roots: str | os.PathLike) -> None:
    """Check and record this project's numba cache files from now on, in this process. Idempotent; roots
    are folders whose caches are ours (the project and the private cache folder)."""
    with _lock:
        for root in roots:
            resolved = Path(root).resolve()
            if resolved not in _roots:
                _roots.append(resolved)
        from numba.core import caching

        cls = caching.IndexDataCacheFile
        if getattr(cls, "_ladder_checked", False):
            return
        load_index, load_data = cls._load_index, cls._load_data
        save_index, save_data = cls._save_index, cls._save_data

        def _load_index(self):
            if _ours(self._cache_path):
                why = problem(self._index_path)
                if why:
                    _say(self._index_path, why)
                    return {}  # as if there were no index: compile, then a fresh index is written
            return load_index(self)

        def _load_data(self, name):
            path = self._data_path(name)
            if _ours(self._cache_path):
                why = problem(path)
                if why:
                    _say(path, why)
                    raise OSError(why)  # numba's load() treats this as a missing file: compile again
            return load_data(self, name)

        def _save_index(self, overloads):
            save_index(self, overloads)
            if _ours(self._cache_path):
                record(self._index_path)

        def _save_data(self, name, data):
            save_data(self, name, data)
            if _ours(self._cache_path):
                record(self._data_path(name))

        cls._load_index, cls._load_data = _load_index, _load_data
        cls._save_index, cls._save_data = _save_index, _save_data
        cls._ladder_checked = True
