"""Classify photos with a stage (or with the judge): `python -m common.classify IMAGE... [--stage 06]`.

Prints the top-5 ImageNet classes with probabilities and the latency, or one JSON object per image with
--format json. A bad image is reported in one line on stderr and the others are still classified; the
exit status is then 2. With random weights (the offline fallback) a warning says the labels mean nothing.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from common import stages
from common.errors import ImageError, LadderError
from common.images import expand_paths, load_image, sample_images
from common.labels import class_names
from common.timing import timed_call
from common.weights import WeightStore

RANDOM_WARNING = (
    "WARNING: these are seeded random weights (the offline fallback), so the class names below mean "
    "NOTHING. For real predictions run `make weights SOURCE=hub` on a machine with network access."
)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max()
    e = np.exp(z)
    return e / e.sum()


def build_model(stage: str, store: WeightStore):
    """('ref' or a stage key, store) -> (model, label)."""
    if stage == "ref":
        from common.reference import Reference

        return Reference(store), "ref (ONNX Runtime)"
    info = stages.find(stage)
    return stages.load(info).ResNet50(store, max_batch=1), info.name


class OutputError(LadderError):
    """The model produced numbers that are not a classification (NaN or Inf logits)."""


def classify(model, path: Path, top: int) -> dict:
    x = load_image(path)[None]
    logits, seconds, compiling = timed_call(model, x)
    if not np.isfinite(logits).all():
        raise OutputError(
            f"{path}: the model produced NaN or Inf logits, not a classification "
            "(weights outside a trained network's range?); check the store with `make weights`"
        )
    probs = softmax(logits[0])
    best = np.argsort(-probs, kind="stable")[:top]
    names = class_names()
    return {
        "file": str(path),
        "top": [{"index": int(i), "name": names[i], "probability": round(float(probs[i]), 6)} for i in best],
        "latency_ms": round(seconds * 1e3, 3),
        "compile_s": round(compiling, 3),
    }


def print_text(result: dict, label: str) -> None:
    extra = f"; compiling first took {result['compile_s']:.1f} s, once" if result["compile_s"] > 0.05 else ""
    print(f"{result['file']}  ({label}: {result['latency_ms']:.1f} ms{extra})")
    for rank, entry in enumerate(result["top"], start=1):
        print(f"  {rank}. {100 * entry['probability']:5.1f}%  {entry['name']} ({entry['index']})")


def top_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 1000:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of classes from 1 to 1000")
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m common.classify", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", nargs="*", help="image files or folders (default: every image in images/)")
    parser.add_argument("--stage", default=None, help="01, 02, ... or 'ref' for ONNX Runtime (default: the last)")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--top", type=top_count, default=5, help="how many classes to list (1-1000)")
    parser.add_argument("--weights", type=Path, default=None, help="weight store (default: weights/)")
    args = parser.parse_args(argv)
    try:
        store = WeightStore(args.weights)
        stage = args.stage or stages.available()[-1].key
        model, label = build_model(stage, store)
        paths = expand_paths(args.images) if args.images else sample_images()
    except LadderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if store.is_random:
        print(RANDOM_WARNING, file=sys.stderr)
    status = 0
    built_compile = getattr(model, "compile_s", 0.0)  # a generated stage compiles in its constructor
    for path in paths:
        try:
            result = classify(model, path, args.top)
            result["compile_s"] = round(result["compile_s"] + built_compile, 3)
            built_compile = 0.0
        except (ImageError, OutputError) as e:
            print(f"error: {e}", file=sys.stderr)
            status = 2
            continue
        if args.format == "json":
            result.update(stage=label, weights=store.source, weights_random=store.is_random)
            print(json.dumps(result, allow_nan=False), flush=True)
        else:
            print_text(result, label)
    return status


if __name__ == "__main__":
    sys.exit(main())
