"""Finding and loading the stages. Folder names start with digits, so they are imported by path."""

import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from common import jit_cache
from common.errors import LadderError
from common.paths import ROOT, STAGES_DIR


@dataclass(frozen=True)
class StageInfo:
    key: str  # "01"
    name: str  # "01_naive"
    path: Path  # stages/01_naive/resnet50.py

    @property
    def folder(self) -> Path:
        return self.path.parent


def available(folder: Path = STAGES_DIR) -> list[StageInfo]:
    out = []
    for d in sorted(folder.iterdir()):
        if d.is_dir() and d.name[:2].isdigit() and (d / "resnet50.py").is_file():
            out.append(StageInfo(d.name[:2], d.name, d / "resnet50.py"))
    return out


def find(key: str) -> StageInfo:
    """'1', '01', '01_naive' or 'naive' -> the stage."""
    stages = available()
    wanted = key.strip()
    for s in stages:
        if wanted in (s.key, s.name, s.name[3:]) or (wanted.isdigit() and int(wanted) == int(s.key)):
            return s
    names = ", ".join(s.name for s in stages)
    raise LadderError(f"no stage {key!r}; the stages are: {names}")


def select(keys: str | None) -> list[StageInfo]:
    """'01,06' -> those stages; None or '' or 'all' -> every stage."""
    if not keys or keys.strip().lower() == "all":
        return available()
    return list(dict.fromkeys(find(k) for k in keys.split(",") if k.strip()))  # each once: 09,09 is 09


def load(stage: StageInfo | str) -> ModuleType:
    info = stage if isinstance(stage, StageInfo) else find(stage)
    module_name = f"stage_{info.name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    jit_cache.install(ROOT, info.folder)  # every numba cache file of the project's is checksummed
    spec = importlib.util.spec_from_file_location(module_name, info.path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # numba's cache and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def threaded(module: ModuleType) -> bool:
    """A stage whose constructor takes `threads` runs multi-threaded (06 on): it is measured at 1 thread
    and on every core."""
    return "threads" in inspect.signature(module.ResNet50.__init__).parameters
