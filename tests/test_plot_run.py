"""tools/plot_run.py: the panels drawn from a generated metrics.json, the summed losses, tolerance of
missing metrics, of unknown pseudo-label metrics and of a broken line, a valid PNG."""
import json
import os
import sys

import pytest
from PIL import Image

from conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
import plot_run  # noqa: E402


def write_metrics(path, rows, broken_line=False):
    with open(path, "w") as f:
        for index, row in enumerate(rows):
            f.write(json.dumps(row) + "\n")
            if broken_line and index == 0:
                f.write('{"iteration": 3, "total_lo\n')  # a run killed while writing


def semi_rows():
    rows = []
    for it in range(0, 40, 10):
        rows.append({"iteration": it, "total_loss": 10.0 - it / 10, "loss_class": 1.0, "loss_bbox": 2.0,
                     "unsup_loss_class": 3.0, "unsup_loss_bbox": 0.5, "loss_consistency": 0.1, "lr": 1e-4,
                     "pseudo/labels_per_image": it / 10, "pseudo/precision@0.5": 0.5, "pseudo/recall@0.5": 0.25,
                     # a metric this tool does not know by name (another helper adds duplicates)
                     "pseudo/duplicates@0.5": 0.1, "pseudo/score_mean": 0.6})
        if it in (10, 30):
            rows.append({"iteration": it, "teacher/bbox/AP": it / 2, "student/bbox/AP": it / 3,
                         "teacher/bbox/APl": float("nan")})
    return rows


def test_all_panels_of_a_semi_supervised_run(tmp_path):
    write_metrics(tmp_path / "metrics.json", semi_rows(), broken_line=True)
    png, titles = plot_run.plot_run(str(tmp_path))
    assert png == str(tmp_path / "curves.png")
    assert titles == ["AP (bbox)", "Loss", "Pseudo labels per image", "Pseudo-label quality"]
    with Image.open(png) as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 600

    drawn = plot_run.panels(plot_run.read_metrics(str(tmp_path / "metrics.json")))
    assert drawn["AP (bbox)"]["teacher"] == ([10, 30], [5.0, 15.0])
    assert drawn["AP (bbox)"]["student"] == ([10, 30], [10 / 3, 10.0])
    loss = drawn["Loss"]
    assert loss["supervised (loss_*)"][1] == [3.0] * 4  # loss_class + loss_bbox, not loss_consistency
    assert loss["unsupervised (unsup_*)"][1] == [3.5] * 4
    assert loss["consistency (CQC)"][1] == [0.1] * 4
    assert set(drawn["Pseudo labels per image"]) == {"pseudo/labels_per_image"}
    assert set(drawn["Pseudo-label quality"]) == {"pseudo/precision@0.5", "pseudo/recall@0.5", "pseudo/duplicates@0.5"}


def test_supervised_run_and_a_resumed_iteration(tmp_path):
    """No pseudo-label metrics: their panels are left out. A resumed run logs an iteration twice: the
    later value is kept."""
    rows = [{"iteration": 0, "total_loss": 5.0, "loss_class": 5.0}, {"iteration": 9, "bbox/AP": 1.0},
            {"iteration": 9, "bbox/AP": 2.0}, {"iteration": 19, "bbox/AP": 4.0}]
    write_metrics(tmp_path / "metrics.json", rows)
    png, titles = plot_run.plot_run(str(tmp_path / "metrics.json"), str(tmp_path / "out" / "run.png"))
    assert titles == ["AP (bbox)", "Loss"] and os.path.isfile(png)
    drawn = plot_run.panels(plot_run.read_metrics(str(tmp_path / "metrics.json")))
    assert drawn["AP (bbox)"] == {"model": ([9, 19], [2.0, 4.0])}
    assert set(drawn["Loss"]) == {"total", "supervised (loss_*)"}


def test_errors_name_the_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="No metrics.json in"):
        plot_run.plot_run(str(tmp_path))
    write_metrics(tmp_path / "metrics.json", [{"iteration": 0, "lr": 0.1}])
    with pytest.raises(ValueError, match="has no AP, loss or pseudo-label metrics"):
        plot_run.plot_run(str(tmp_path))
    assert plot_run.main([str(tmp_path)]) == 1


def test_a_restart_drops_the_stale_points_it_has_not_reached_again(tmp_path):
    """Killed after the evaluation at 29, resumed from the checkpoint at 9 and stopped at 19: the first
    attempt's 19 is replaced and its 29 is gone from the curve (it belongs to no model that exists)."""
    rows = [{"iteration": 9, "bbox/AP": 1.0}, {"iteration": 19, "bbox/AP": 2.0}, {"iteration": 29, "bbox/AP": 3.0},
            {"iteration": 10, "total_loss": 4.0}, {"iteration": 19, "bbox/AP": 2.5}]
    write_metrics(tmp_path / "metrics.json", rows)
    drawn = plot_run.panels(plot_run.read_metrics(str(tmp_path / "metrics.json")))
    assert drawn["AP (bbox)"] == {"model": ([9, 19], [1.0, 2.5])}
