"""`make codegen`: write the source that code-generating stages compile, to a visible folder to read.

The stages themselves keep it in a private cache folder (see common/paths.py); this copy is for study. It
needs no weight store and compiles nothing: the source depends on the shapes alone.
"""

import argparse
import re
import sys
from pathlib import Path

from common import stages
from common.errors import LadderError
from common.generated import ShapesOnly, source_only


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.codegen_dump", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("codegen"))
    args = parser.parse_args(argv)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        for info in stages.available():
            module = stages.load(info)
            if not hasattr(module, "generate"):
                continue
            with source_only():
                source = module.ResNet50(ShapesOnly()).source
            path = args.out / f"{info.name}.py"
            path.write_text(source, encoding="utf-8")
            functions = len(re.findall(r"^def ", source, re.M))
            # The kernels written as LLVM IR (common/fma_tile.py, vnni.py, amx.py, winograd_ir.py): a line each.
            built = len(re.findall(r"^\w+ = (?:fma_tile|vnni|amx|winograd_ir)\.\w+\(", source, re.M))
            ir = f" and {built} kernels of LLVM IR" if built else ""
            print(f"{path}: {len(source.splitlines())} lines, {functions} functions{ir} (search for a layer's name)")
    except LadderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
