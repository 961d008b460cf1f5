"""Interim `make bench`: every stage on the sample images, checked against the judge, batch-1 latency."""

import statistics
import sys

from common import stages
from common.images import load_batch, sample_images
from common.reference import Reference, compare
from common.timing import timed_call
from common.weights import WeightStore


def main() -> int:
    store = WeightStore()
    batch, _paths, _ = load_batch(sample_images())
    judge = Reference(store, max_batch=len(batch))(batch)
    for info in stages.available():
        model = stages.load(info).ResNet50(store)
        times, compile_s, ok = [], 0.0, True
        for i in range(len(batch)):
            logits, seconds, compiling = timed_call(model, batch[i : i + 1])
            compile_s += compiling
            times.append(seconds)
            ok = ok and compare(logits[0], judge[i]).ok
        print(
            f"{info.name:16s} median {1e3 * statistics.median(times):9.1f} ms  min {1e3 * min(times):9.1f} ms"
            f"  compile {compile_s:5.1f} s  {'matches the judge' if ok else 'WRONG'}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
