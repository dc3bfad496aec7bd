"""tools/benchmark.py's package: the harness (worker processes, memory, environment), the detector and
semi-supervised sections with their runners, and the markdown report."""
