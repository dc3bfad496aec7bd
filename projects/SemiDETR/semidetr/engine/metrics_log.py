"""Reading back the metrics.json that detectron2's JSONWriter appends to a run's OUTPUT_DIR: the one reader
of the tools that summarise (tools/run_ssod_benchmarks.py) and plot (tools/plot_run.py) runs."""
import json
from typing import Dict, List, Tuple

__all__ = ["read_metrics_log"]


def read_metrics_log(path: str) -> Tuple[List[Dict], int]:
    """(the records of the run's final history in file order, the number of lines skipped).

    JSONWriter appends: a run resumed from a checkpoint (or restarted from scratch after dying before its
    first one) writes again from an earlier iteration, and the records it supersedes, those from that
    iteration on, are dropped (else a mean over the run would count the lost stretch twice, and a curve
    would keep its stale points). Records of one iteration in a row (the training step's, then an
    evaluation's) are all kept. A line that does not parse (a run killed while writing it) is skipped and
    counted, for the caller to warn about.
    """
    records: List[Dict] = []
    skipped = 0
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                iteration = int(record["iteration"])
            except (ValueError, KeyError, TypeError):
                skipped += 1
                continue
            if records and iteration < records[-1]["iteration"]:  # a restart: it replaces from here on
                records = [r for r in records if r["iteration"] < iteration]
            records.append(record)
    return records, skipped
