"""Smoke tests of tools/benchmark.py at sizes that run in seconds.

The detector section (our models only) and the semi-supervised section run end to end in worker
processes and write their markdown table and JSON; the comparison with Hugging Face `transformers` runs
only where it is installed (`SEMIDETR_EXTRAS=benchmark bash tools/setup_env.sh`). The profile
accounting (exclusive times of nested scopes) is checked on a hand-made event tree.
"""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import REPO_ROOT, micro_config_args

TOOL = os.path.join(REPO_ROOT, "tools", "benchmark.py")
sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
from benchmarking.semi import scope_breakdown  # noqa: E402


def _run_tool(tmp_path, *args):
    out = tmp_path / "benchmark.md"
    command = [sys.executable, TOOL, "--threads", "1", "--out", str(out), *args]
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return out.read_text(), json.loads((tmp_path / "benchmark.json").read_text())


def test_detector_and_semi_sections_without_transformers(micro_shapes, tmp_path):
    semi_opts = micro_config_args(
        micro_shapes, tmp_path / "unused", "DATASETS.TRAIN", "('micro_train.1@25',)",
        "DATASETS.TRAIN_UNLABELED", "('micro_train.1@25-unlabeled',)", "SOLVER.IMS_PER_BATCH", "3",
        "SEMI.SAMPLE_RATIO", "(1, 2)", "SEMI.VIS_PERIOD", "0")
    markdown, results = _run_tool(
        tmp_path, "--sections", "detector", "semi", "--sizes", "micro", "--no-transformers",
        "--warmup", "0", "--repeat", "1", "--semi-runs", "supervised", "semidetr_stage1",
        "--semi-warmup", "0", "--semi-iters", "1", "--profile-iters", "1", "--profile-runs", "semidetr_stage1",
        "--semi-opts", *semi_opts)

    env = results["environment"]
    assert env["threads"] == 1 and env["torch"] and len(env["load_start"]) == 3 and len(env["load_end"]) == 3
    models = results["detector"]["micro"]["models"]
    assert list(models) == ["ours_deformable_detr", "ours_dino"]
    for entry in models.values():
        for mode in ("train", "infer"):
            assert entry[mode]["median_s"] > 0 and entry[mode]["images_per_s"] > 0
            assert entry[mode]["memory"]["peak_rss_mib"] >= entry[mode]["memory"]["baseline_rss_mib"] > 0
    assert "transformers comparison skipped" in results["detector_note"]

    semi = results["semi"]
    assert semi["student_images"] == 3
    runs = semi["runs"]
    assert runs["supervised"]["info"]["student_images"] == runs["semidetr_stage1"]["info"]["student_images"] == 3
    assert runs["semidetr_stage1"]["info"]["stage"] == "one_to_many"
    assert runs["semidetr_stage1"]["time_ratio_vs_supervised"] > 0
    breakdown = semi["breakdown"]["semidetr_stage1"]
    for scope in ("semi/teacher_inference", "semi/student_forward", "step/backward", "step/optimizer", "semi/ema"):
        assert breakdown["scopes"][scope]["exclusive_ms"] > 0, scope
    # Exclusive times (with "other") add up to the iteration: nothing is counted twice.
    assert sum(row["share"] for row in breakdown["scopes"].values()) == pytest.approx(1.0, abs=0.01)
    assert "semidetr_stage1" in semi["goals"]

    assert "## Detector: ours vs transformers" in markdown and "ours Deformable DETR" in markdown
    assert "## Semi-supervised step" in markdown and "Profiled breakdown" in markdown


def test_detector_comparison_with_transformers(tmp_path):
    pytest.importorskip("transformers", reason="the benchmark extra is not installed "
                                               "(SEMIDETR_EXTRAS=benchmark bash tools/setup_env.sh)")
    markdown, results = _run_tool(tmp_path, "--sections", "detector", "--sizes", "micro", "--warmup", "0",
                                  "--repeat", "1")
    size = results["detector"]["micro"]
    assert list(size["models"]) == ["ours_deformable_detr", "hf_deformable_detr", "ours_dino"]
    ours, theirs = size["models"]["ours_deformable_detr"], size["models"]["hf_deformable_detr"]
    # The same trainable parameters: the benchmark un-freezes transformers' res3-res5 as ours.
    assert ours["info"]["trainable_parameters_m"] == pytest.approx(theirs["info"]["trainable_parameters_m"], rel=0.02)
    assert ours["train"]["time_ratio_vs_hf"] > 0 and ours["infer"]["speedup_vs_hf"] > 0
    assert set(size["goals"]) == {"train_ratio", "train_ratio_met", "infer_speedup", "infer_speedup_met"}
    assert "transformers Deformable DETR" in markdown


def test_scope_breakdown_counts_nested_scopes_once():
    def event(name, start, end, parent=None):
        return SimpleNamespace(name=name, time_range=SimpleNamespace(elapsed_us=lambda: end - start),
                               cpu_parent=parent)

    forward = event("semi/student_forward", 0, 600_000)
    op = event("aten::mm", 100_000, 300_000, forward)  # not a scope: stays in its scope's time
    hungarian = event("matching/hungarian", 300_000, 350_000, op)  # nested through a non-scope event
    loss = event("semi/cqc_loss", 600_000, 700_000)
    mining = event("semi/cpm_mining", 610_000, 640_000, loss)
    events = [forward, op, hungarian, loss, mining]
    result = scope_breakdown(events, wall_seconds=1.0, iterations=1)
    scopes = result["scopes"]
    assert scopes["semi/student_forward"]["inclusive_ms"] == 600.0
    assert scopes["semi/student_forward"]["exclusive_ms"] == 550.0
    assert scopes["matching/hungarian"]["exclusive_ms"] == 50.0
    assert scopes["semi/cqc_loss"]["exclusive_ms"] == 70.0
    assert scopes["other"]["exclusive_ms"] == 300.0
    assert result["matching_ms"] == 80.0 and result["matching_share"] == 0.08
    assert sum(row["share"] for row in scopes.values()) == pytest.approx(1.0)
