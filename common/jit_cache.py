"""numba's on-disk cache, checked before a stage uses it.

numba keeps compiled kernels in __pycache__ next to their source (`cache=True`): an index (.nbi) per
function and a data file (.nbc) per compiled signature, both pickles. A truncated or corrupt one (a full
disk, a copy cut short) does not make numba recompile: the first call raises an UnpicklingError from deep
inside numba. So before a stage module is imported, every such file is walked opcode by opcode (pickletools,
which executes nothing: a data file names the module it belongs to, which is not imported yet), and one that
is cut short or is not a pickle is removed with one line on stderr; numba then compiles that function again.
A flipped bit inside the machine code would pass: numba keeps no checksum, and neither can we.
"""

import io
import pickletools
import sys
from pathlib import Path


def _check_pickles(path: Path) -> None:
    """Raise unless the file is exactly what numba writes: an index is two pickles (numba's version, then
    the stamp and the overloads), a data file one."""
    data = path.read_bytes()
    stream = io.BytesIO(data)
    for _ in range(2 if path.suffix == ".nbi" else 1):
        for _op in pickletools.genops(stream):
            pass
    if stream.tell() != len(data):
        raise ValueError("bytes after the end of the pickle")


def drop_unreadable(folder: Path) -> list[Path]:
    """Remove the numba cache files in `folder` that numba could not read; return what was removed."""
    if not folder.is_dir():
        return []
    dropped = []
    for path in sorted(folder.glob("*.nbi")) + sorted(folder.glob("*.nbc")):
        try:
            _check_pickles(path)
        except FileNotFoundError:
            continue  # removed meanwhile, by us or by another process rewriting its cache
        except Exception as e:  # a malformed pickle can raise almost anything
            # f-12.py311.3.nbc is listed in f-12.py311.nbi: without its data the index must go too
            stale = [path, path.with_name(path.name.rsplit(".", 2)[0] + ".nbi")] if path.suffix == ".nbc" else [path]
            for p in stale:
                p.unlink(missing_ok=True)
            dropped.append(path)
            print(
                f"{path}: unreadable numba cache file ({type(e).__name__}); removed, it will be compiled again",
                file=sys.stderr,
            )
    return dropped
