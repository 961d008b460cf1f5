"""The 1000 ImageNet class names in torchvision's order (see data/SOURCES.md)."""

from functools import cache

from common import spec
from common.paths import DATA_DIR


@cache
def class_names() -> tuple[str, ...]:
    names = tuple((DATA_DIR / "imagenet_classes.txt").read_text(encoding="utf-8").splitlines())
    assert len(names) == spec.NUM_CLASSES, f"imagenet_classes.txt has {len(names)} names"
    return names
