#!/usr/bin/env python
"""One PNG of a training run's curves, from the metrics.json detectron2 writes into its OUTPUT_DIR.

    python tools/plot_run.py output/semidetr_shapes10_cpu               # -> output/.../curves.png
    python tools/plot_run.py output/semidetr_shapes10_cpu --output report.png

Panels (each drawn when its metrics were logged): AP of the teacher and the student (or of the model,
for a supervised run) over iterations; total, supervised (sum of the loss_* terms) and unsupervised
(sum of the unsup_* terms, as weighted in training) loss, and the CQC loss; pseudo labels per image
(every "pseudo/...per_image" metric); pseudo-label quality (every "pseudo/" or "cpm/" metric naming a
precision, recall or duplicates). A resumed run's records replace those its restart superseded.
"""
import argparse
import logging
import math
import os
import re
import sys
from typing import Dict, List, Optional, Tuple

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from semidetr.engine.metrics_log import read_metrics_log  # noqa: E402
from semidetr.engine.semi_trainer import CONSISTENCY_LOSS, UNSUP_PREFIX  # noqa: E402

logger = logging.getLogger("semidetr.plot_run")

Series = Dict[str, Tuple[List[int], List[float]]]

AP_KEY = re.compile(r"(^|/)bbox/AP$")  # "teacher/bbox/AP", "bbox/AP", "teacher/<test set>/bbox/AP"
PSEUDO_PREFIXES = ("pseudo/", "cpm/")
QUALITY_WORDS = ("precision", "recall", "duplicate")


def read_metrics(path: str) -> Dict[str, Dict[int, float]]:
    """key -> {iteration: value} of every numeric metric in a metrics.json (one JSON object per line), from
    the records of the run's final history (`read_metrics_log`). Lines that do not parse (a run killed while
    writing) are skipped with a warning; later records of the same iteration replace earlier ones."""
    records, skipped = read_metrics_log(path)
    if skipped:
        logger.warning("%s: skipped %d lines that are not metrics", path, skipped)
    values: Dict[str, Dict[int, float]] = {}
    for row in records:
        iteration = int(row["iteration"])
        for key, value in row.items():
            if key != "iteration" and isinstance(value, (int, float)) and not isinstance(value, bool):
                values.setdefault(key, {})[iteration] = float(value)
    return values


def _series(points: Dict[int, float]) -> Tuple[List[int], List[float]]:
    kept = sorted((i, v) for i, v in points.items() if math.isfinite(v))
    return [i for i, _ in kept], [v for _, v in kept]


def _summed(values: Dict[str, Dict[int, float]], keys: List[str]) -> Dict[int, float]:
    """Sum over `keys` at the iterations where all of them were logged."""
    if not keys:
        return {}
    common = set.intersection(*(set(values[k]) for k in keys))
    return {i: sum(values[k][i] for k in keys) for i in common}


def panels(values: Dict[str, Dict[int, float]]) -> Dict[str, Series]:
    """The panels (title -> label -> series) that have data, in drawing order."""
    loss_terms = sorted(k for k in values if k.startswith("loss_") and k != CONSISTENCY_LOSS)
    unsup_terms = sorted(k for k in values if k.startswith(UNSUP_PREFIX))
    pseudo = sorted(k for k in values if k.startswith(PSEUDO_PREFIXES))
    per_image = [k for k in pseudo if k.startswith("pseudo/") and "per_image" in k]
    quality = [k for k in pseudo if k not in per_image and any(w in k for w in QUALITY_WORDS)]
    candidates = {
        "AP (bbox)": {k.replace("/bbox/AP", "").replace("bbox/AP", "model"): values[k]
                      for k in sorted(values) if AP_KEY.search(k)},
        "Loss": {"total": values.get("total_loss", {}),
                 "supervised (loss_*)": _summed(values, loss_terms),
                 "unsupervised (unsup_*)": _summed(values, unsup_terms),
                 "consistency (CQC)": values.get(CONSISTENCY_LOSS, {})},
        "Pseudo labels per image": {k: values[k] for k in per_image},
        "Pseudo-label quality": {k: values[k] for k in quality},
    }
    result = {}
    for title, lines in candidates.items():
        drawn = {label: _series(points) for label, points in lines.items()}
        drawn = {label: xy for label, xy in drawn.items() if xy[0]}
        if drawn:
            result[title] = drawn
    return result


def plot_run(run: str, output: Optional[str] = None) -> Tuple[str, List[str]]:
    """Write the PNG of run folder (or metrics.json) `run`; returns (its path, the panel titles).

    Raises:
        FileNotFoundError: no metrics.json; ValueError: nothing in it to plot.
    """
    metrics_file = run if os.path.isfile(run) else os.path.join(run, "metrics.json")
    if not os.path.isfile(metrics_file):
        raise FileNotFoundError(f"No metrics.json in {run}: give a training run's OUTPUT_DIR (or its metrics.json)")
    drawn = panels(read_metrics(metrics_file))
    if not drawn:
        raise ValueError(f"{metrics_file} has no AP, loss or pseudo-label metrics to plot")
    output = output or os.path.join(os.path.dirname(metrics_file), "curves.png")
    columns = min(2, len(drawn))
    rows = math.ceil(len(drawn) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 4.0 * rows), squeeze=False)
    for ax, (title, lines) in zip(axes.flat, drawn.items()):
        for label, (iterations, series) in lines.items():
            ax.plot(iterations, series, label=label, marker="o" if len(series) < 20 else None, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(drawn):]:
        ax.set_visible(False)
    figure.suptitle(os.path.basename(os.path.dirname(os.path.abspath(metrics_file))))
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    figure.savefig(output, dpi=100)
    titles = [ax.get_title() for ax in axes.flat if ax.get_visible()]
    plt.close(figure)
    return output, titles


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a training run's OUTPUT_DIR (or its metrics.json)")
    parser.add_argument("--output", default=None, help="the PNG to write (default: <run>/curves.png)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path, titles = plot_run(args.run, args.output)
    except (FileNotFoundError, ValueError) as error:
        logger.error("%s", error)
        return 1
    logger.info("Wrote %s (%s)", path, ", ".join(titles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
