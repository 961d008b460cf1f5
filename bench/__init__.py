"""The benchmark harness: runs stages and peers, writes results, draws charts."""

import common  # noqa: F401  (first: its Ctrl-C handling covers the imports of every bench command)
