"""Where things live: the project, the weight store, the images, the private cache."""

import os
import stat
from pathlib import Path

from common.errors import CacheError

ROOT = Path(__file__).resolve().parent.parent
IMAGES_DIR = ROOT / "images"
STAGES_DIR = ROOT / "stages"
RESULTS_DIR = ROOT / "results"
DATA_DIR = Path(__file__).resolve().parent / "data"

WEIGHTS_ENV = "RESNET50_WEIGHTS"
CACHE_ENV = "RESNET50_CACHE"


def weights_dir() -> Path:
    """The weight store: $RESNET50_WEIGHTS, else weights/ in the project."""
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env).expanduser() if env else ROOT / "weights"


def cache_base() -> Path:
    """$RESNET50_CACHE, else $XDG_CACHE_HOME/resnet50-ladder, else ~/.cache/resnet50-ladder (not created)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "resnet50-ladder"


def cache_dir(*parts: str) -> Path:
    """A private per-user cache folder (mode 0700), created on demand.

    $RESNET50_CACHE, else $XDG_CACHE_HOME/resnet50-ladder, else ~/.cache/resnet50-ladder. Generated code
    is imported from here, so a folder another user can write to would let them run code as us: refuse it.
    """
    base = cache_base()
    path = base.joinpath(*parts)
    for folder in [base, *[base.joinpath(*parts[: i + 1]) for i in range(len(parts))]]:
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            why = "a file, not a folder" if folder.exists() and not folder.is_dir() else e.strerror or str(e)
            raise CacheError(f"{folder}: cannot use it as a cache folder: {why}; fix it or set {CACHE_ENV}") from None
        _check_private(folder)
    return path


def _check_private(folder: Path) -> None:
    info = folder.lstat()
    if stat.S_ISLNK(info.st_mode):
        raise CacheError(f"{folder}: cache folder is a symbolic link; remove it or set {CACHE_ENV}")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise CacheError(f"{folder}: cache folder belongs to another user; remove it or set {CACHE_ENV}")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CacheError(f"{folder}: cache folder is writable by other users; `chmod 700` it or set {CACHE_ENV}")
