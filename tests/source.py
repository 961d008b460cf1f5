"""Reading a stage's generated source, for tests of several stages."""

import re


def parallel_regions_per_image(source: str) -> int:
    """Every prange loop the forward pass enters for one image: a fork and a join of the thread pool each."""
    blocks = {m.group(1): block for block in source.split("\n\n\n") if (m := re.search(r"^def (\w+)\(", block, re.M))}
    forward = blocks["forward"][blocks["forward"].index("if first <= 0") :]
    calls = re.findall(r"^\s+(\w+)\(", forward, re.M)
    return sum(blocks[name].count("in prange(") for name in calls if name in blocks)
