"""tools/gpu_check.sh and tools/gpu_benchmark.py on the CPU: argument handling, the dry run (CUDA tests
skipped, a micro benchmark, the report), and the goal checks of the report (on made-up inputs)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
import gpu_benchmark  # noqa: E402

GPU_CHECK = os.path.join(REPO_ROOT, "tools", "gpu_check.sh")


def _run(*args, timeout=900):
    return subprocess.run(["bash", GPU_CHECK, *args], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout, env={**os.environ, "PYTHON": sys.executable})


def test_dry_run_writes_the_report(tmp_path):
    result = _run("--dry-run", "--out", str(tmp_path), "--", "--runs", "semidetr")
    assert result.returncode == 0, result.stdout[-4000:]
    report = (tmp_path / "report.md").read_text()
    assert "**Dry run**" in report and "## Environment" in report and "torch " in report
    assert "## CUDA tests" in report and "skipped" in report and "FAILED" not in report
    assert "Multi-scale deformable attention alone" in report and "| encoder |" in report
    assert "Semi-DETR stage-1 step (SHM + CQC + CPM) | float32 | pytorch |" in report
    results = json.load(open(tmp_path / "benchmark.json"))
    assert results["dry_run"] and list(results["steps"]) == ["semidetr-float32-pytorch"]
    assert results["steps"]["semidetr-float32-pytorch"]["info"]["student_images"] == 3


def test_arguments_are_checked(tmp_path):
    result = _run("--frobnicate")
    assert result.returncode == 2 and "unknown argument '--frobnicate'" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_without_a_gpu_it_says_so(tmp_path):
    result = _run("--out", str(tmp_path))
    assert result.returncode == 2 and "no usable CUDA GPU" in result.stdout and "--dry-run" in result.stdout


def _results(fused_ms, fused_mib, bf16_s):
    op_rows = [{"stage": "encoder", "queries": 100, "impl": impl, "what": "op", "value_dtype": "float32",
                "forward_ms": ms / 3, "forward_backward_ms": ms, "peak_mib": mib}
               for impl, ms, mib in (("pytorch", 30.0, 1000.0), ("triton", fused_ms, fused_mib))]
    steps = {}
    for dtype, seconds in (("float32", 1.0), ("bfloat16", bf16_s)):
        steps[f"semidetr-{dtype}-triton"] = {
            "run": "semidetr", "dtype": dtype, "impl": "triton", "median_s": seconds, "min_s": seconds,
            "images_per_s": 5 / seconds, "memory": {"cuda_max_allocated_mib": 9000.0},
            "metrics": {"pseudo/labels_per_image": 1.5}}
    return {"dry_run": False, "op": {"batch": 5, "image_size": [800, 1333], "rows": op_rows}, "steps": steps,
            "environment": {"device_name": "GPU", "date_utc": "today", "torch": "x", "torch_cuda": "y",
                            "python": "3", "git_commit": "c", "cpu_count": 1, "command": "c"}}


def test_goals_are_checked_against_the_issue():
    results = _results(fused_ms=10.0, fused_mib=400.0, bf16_s=0.5)
    goals = gpu_benchmark.evaluate_goals(results)
    assert goals["op encoder float32"] == {"speedup": 3.0, "speedup_met": True, "memory_ratio": 0.4,
                                           "memory_met": True}
    assert goals["bf16 step semidetr triton"] == {"speedup": 2.0, "speedup_met": True}
    results["goals"] = goals
    report = gpu_benchmark.render_markdown(results)
    assert "| op encoder float32: fused vs PyTorch forward+backward | 3.0x | >= 3.0x | True |" in report
    assert "official code ~0.63 on A100" in report

    missed = gpu_benchmark.evaluate_goals(_results(fused_ms=20.0, fused_mib=600.0, bf16_s=0.8))
    assert missed["op encoder float32"]["speedup_met"] is False and missed["op encoder float32"]["memory_met"] is False
    assert missed["bf16 step semidetr triton"]["speedup_met"] is False


def test_dry_run_arguments():
    args = gpu_benchmark.parse_args(["--dry-run"])
    assert args.device == "cpu" and args.impls == ["pytorch"] and args.iters == 1
    args = gpu_benchmark.parse_args([])
    assert args.device == "cuda" and args.impls == ["pytorch", "triton"] and args.dtypes == ["float32", "bfloat16"]
