"""The benchmark harness: runs stages and peers, writes results, draws charts."""
