"""tools/run_ssod_benchmarks.py's scheduling: priorities, rows queued ahead of later seeds, and the run lock."""
import fcntl
import importlib.util
import itertools
import json
import os
import threading
import time
from types import SimpleNamespace

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("run_ssod_benchmarks",
                                                  os.path.join(REPO_ROOT, "tools/run_ssod_benchmarks.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_queue_runs_the_smallest_priority_first(script):
    queue = script.JobQueue(1)
    release, order = threading.Event(), []
    blocker = queue.submit((0,), release.wait)
    jobs = [queue.submit(priority, order.append, name) for priority, name in (((2, 1), "c"), ((1, 5), "b"), ((1, 0), "a"))]
    release.set()
    blocker.result(timeout=10)
    for job in jobs:
        job.result(timeout=10)
    assert order == ["a", "b", "c"]


def test_rows_submitted_when_the_burn_in_ends_precede_a_later_seed(script):
    """A job queued from the done-callback of the job a slot just finished runs before already-queued jobs
    of lower priority (a seed's rows before the next seed's burn-in)."""
    queue = script.JobQueue(1)
    release, order = threading.Event(), []
    burn_in = queue.submit((0, 0), lambda: (release.wait(), order.append("seed 1 burn-in")))
    later_seed = queue.submit((1, 0), order.append, "seed 2 burn-in")
    rows = []
    burn_in.add_done_callback(lambda _: rows.append(queue.submit((0, 2), order.append, "seed 1 row")))
    release.set()
    later_seed.result(timeout=10)
    rows[0].result(timeout=10)
    assert order == ["seed 1 burn-in", "seed 1 row", "seed 2 burn-in"]


def test_failures_reach_the_caller(script):
    queue = script.JobQueue(1)
    with pytest.raises(ZeroDivisionError):
        queue.submit((0,), lambda: 1 / 0).result(timeout=10)
    assert queue.submit((0,), lambda: 7).result(timeout=10) == 7  # the slot survives


def test_a_locked_run_is_waited_for_and_then_reused(script, tmp_path):
    """A second instance does not train a run another instance is training: it waits for the lock and
    returns the finished run's result (no training command is started: the config does not even exist)."""
    out = tmp_path / "run"
    out.mkdir()
    holder = open(out / ".lock", "w")
    fcntl.flock(holder, fcntl.LOCK_EX)
    result = {}
    waiter = threading.Thread(target=lambda: result.update(script.run_training("missing.yaml", str(out), [], 1)))
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive() and not result
    (out / "model_final.pth").write_bytes(b"")
    with open(out / "metrics.json", "w") as f:
        f.write(json.dumps({"iteration": 9, "total_loss": 1.0}) + "\n")
        f.write(json.dumps({"iteration": 9, "teacher/bbox/AP": 12.5, "teacher/bbox/AP50": 20.0}) + "\n")
    fcntl.flock(holder, fcntl.LOCK_UN)
    holder.close()
    waiter.join(timeout=10)
    assert result == {"AP": 12.5, "AP50": 20.0, "iteration": 9}


# ------------------------------------------------------------------------------------------------------
# What each run trains on: the fold of the seed, the same labeled images per step, budgets in the names
def _planned_runs(script, tmp_path, monkeypatch, setting="shapes_lite", **overrides):
    """The (config, run directory, overrides) of every run of one setting x seed, nothing trained."""
    planned = []

    def fake_run_training(config, out_dir, opts, threads, extend=False):
        planned.append((config, out_dir, opts))
        return {"AP": 1.0, "AP50": 2.0, "iteration": 0}

    monkeypatch.setattr(script, "run_training", fake_run_training)
    args = SimpleNamespace(burn_in=300, iters=100, curve_period=50, rows=list(script.ROWS), jobs=1, threads=1,
                           out=str(tmp_path), no_ceiling=False, ceiling_only=False, device="cpu")
    for key, value in overrides.items():
        setattr(args, key, value)
    script.run_setting(setting, 2, args, script.JobQueue(1), (0, 0))
    return {os.path.relpath(out_dir, tmp_path): (config, dict(zip(opts[::2], opts[1::2])))
            for config, out_dir, opts in planned}


def test_every_row_sees_the_same_labeled_images_per_step_of_the_seeds_fold(script, tmp_path, monkeypatch):
    runs = _planned_runs(script, tmp_path, monkeypatch)
    burn_in = runs["shapes_lite/seed2/burn_in300"][1]
    assert burn_in["DATASETS.TRAIN"] == "('shapes_lite_train.2@5',)" and burn_in["SOLVER.MAX_ITER"] == "300"
    assert burn_in["TEST.EVAL_PERIOD"] == "50"  # the plateau curve
    rows = {row: runs[f"shapes_lite/seed2/rows_from300_iters100/{row}"] for row in script.ROWS}
    per_step = script.labeled_per_step("ssod_baseline_shapes_lite_cpu.yaml")
    assert per_step == 1  # 5 images split 1:4
    assert rows["sup_only"][1]["SOLVER.IMS_PER_BATCH"] == str(per_step)
    for row in script.SEMI_ROWS:
        config, opts = rows[row]
        assert opts["DATASETS.TRAIN"] == "('shapes_lite_train.2@5',)", row
        assert opts["DATASETS.TRAIN_UNLABELED"] == "('shapes_lite_train.2@5-unlabeled',)", row
        assert "SOLVER.IMS_PER_BATCH" not in opts  # the config's 5 = 1 labeled + 4 unlabeled
    for config, opts in rows.values():
        assert opts["MODEL.WEIGHTS"].endswith("shapes_lite/seed2/burn_in300/model_final.pth")
        assert opts["SOLVER.MAX_ITER"] == "100" and opts["SEED"] == "2"
        assert opts["TEST.EVAL_PERIOD"] == "50"  # the row's curve: still gaining at its end?
    assert all(opts["MODEL.DEVICE"] == "cpu" for _, opts in runs.values())
    on_gpu = _planned_runs(script, tmp_path / "gpu", monkeypatch, device="cuda")
    assert len(on_gpu) == len(runs) and all(opts["MODEL.DEVICE"] == "cuda" for _, opts in on_gpu.values())
    ceiling = runs["ceiling_shapes_lite_train/seed2/ceiling400"][1]
    assert ceiling["DATASETS.TRAIN"] == "('shapes_lite_train',)" and ceiling["SOLVER.MAX_ITER"] == "400"
    assert "ceiling_shapes_lite_train/seed2/ceiling400" not in _planned_runs(script, tmp_path, monkeypatch,
                                                                             no_ceiling=True)
    # --ceiling-only: the ceiling alone, no burn-in and no rows (a second core's job beside a burn-in)
    assert list(_planned_runs(script, tmp_path, monkeypatch, ceiling_only=True)) == \
        ["ceiling_shapes_lite_train/seed2/ceiling400"]


def test_shapes_lite10_is_shapes_lite_at_10_percent_and_tau_0_3_and_shares_its_ceiling(script, tmp_path, monkeypatch):
    lite, lite10 = (_planned_runs(script, tmp_path, monkeypatch, setting=s) for s in ("shapes_lite", "shapes_lite10"))
    assert script.SETTINGS["shapes_lite10"][0] == script.SETTINGS["shapes_lite"][0]  # the same burn-in config
    burn_in = lite10["shapes_lite10/seed2/burn_in300"][1]
    assert burn_in["DATASETS.TRAIN"] == "('shapes_lite_train.2@10',)"
    semidetr = lite10["shapes_lite10/seed2/rows_from300_iters100/semidetr"][1]
    assert semidetr["DATASETS.TRAIN_UNLABELED"] == "('shapes_lite_train.2@10-unlabeled',)"
    assert lite10["ceiling_shapes_lite_train/seed2/ceiling400"] == lite["ceiling_shapes_lite_train/seed2/ceiling400"]
    thresholds = {row: _flat_config(os.path.join(script.QUICK, script.row_config(row, "shapes_lite10")),
                                    list(itertools.chain(*opts.items())))["SEMI.PSEUDO_SCORE_THRESH"]
                  for row, (config, opts) in ((r, lite10[f"shapes_lite10/seed2/rows_from300_iters100/{r}"])
                                              for r in script.SEMI_ROWS)}
    assert set(thresholds.values()) == {0.3}, thresholds


def _write_run(run_dir, evaluations, pseudo=None, teacher=False, iterations=100):
    os.makedirs(run_dir, exist_ok=True)
    prefix = "teacher/bbox/" if teacher else "bbox/"
    with open(os.path.join(run_dir, "metrics.json"), "w") as f:
        for iteration in range(0, iterations, 10):
            f.write(json.dumps({"iteration": iteration, "total_loss": 1.0, **(pseudo or {}).get(iteration, {})}) + "\n")
        for iteration, ap in evaluations:
            f.write(json.dumps({"iteration": iteration, prefix + "AP": ap, prefix + "AP50": 2 * ap}) + "\n")
    open(os.path.join(run_dir, "model_final.pth"), "wb").close()


@pytest.mark.parametrize("keep", [False, True])
def test_finished_runs_keep_only_their_final_checkpoint(script, tmp_path, monkeypatch, keep):
    """Periodic checkpoints of 160-270 MB each filled the disk: a finished run keeps model_final.pth (what the
    rows and a longer run start from) unless --keep-checkpoints; an unfinished run keeps what it resumes from."""
    def fake_run_training(config, out_dir, opts, threads, extend=False):
        _write_run(out_dir, [(99, 1.0)])
        for iteration in (49, 99):
            open(os.path.join(out_dir, f"model_{iteration:07d}.pth"), "wb").close()
        return {"AP": 1.0, "AP50": 2.0, "iteration": 99}

    monkeypatch.setattr(script, "run_training", fake_run_training)
    args = SimpleNamespace(burn_in=100, iters=100, curve_period=50, rows=["sup_only", "semidetr"], jobs=1, threads=1,
                           out=str(tmp_path), no_ceiling=False, ceiling_only=False, device="cpu",
                           keep_checkpoints=keep)
    script.run_setting("shapes_lite", 1, args, script.JobQueue(1), (0, 0))
    runs = [os.path.join(tmp_path, "shapes_lite/seed1/burn_in100"),
            *(os.path.join(tmp_path, "shapes_lite/seed1/rows_from100_iters100", row) for row in args.rows),
            os.path.join(tmp_path, "ceiling_shapes_lite_train/seed1/ceiling200")]
    for run in runs:
        expected = {"model_final.pth", "metrics.json"} | ({"model_0000049.pth", "model_0000099.pth"} if keep else set())
        assert expected <= set(os.listdir(run)), run
        assert keep or not [name for name in os.listdir(run) if name.startswith("model_0")], run
    unfinished = tmp_path / "unfinished"
    os.makedirs(unfinished)
    (unfinished / "model_0000049.pth").write_bytes(b"resume from here")
    (unfinished / "metrics.json").write_text("")
    assert script.prune_checkpoints(str(unfinished)) == 0 and (unfinished / "model_0000049.pth").exists()


def test_report_table_has_the_checkable_header_sample_std_gap_and_plateau(script, tmp_path):
    args = SimpleNamespace(burn_in=300, iters=100, curve_period=100, rows=[*script.ROWS, "sup_only_ema"],
                           seeds=[1, 2, 3], settings=["shapes_lite"], out=str(tmp_path))
    final = {"sup_only": (20, 22, 24), "ssod_baseline": (21, 23, 25), "shm": (22, 24, 26), "shm_cqc": (23, 25, 27),
             "semidetr": (30, 31, 32), "ceiling": (40, 42, 44), "sup_only_ema": (24, 25, 26)}
    for seed in (1, 2, 3):
        dirs = script.run_dirs("shapes_lite", seed, args)
        # Burn-in curve: +5 AP over the first 2/3, then +0.5 per 100 iterations: +0.375 per quarter -> a plateau.
        _write_run(dirs["burn_in"], [(99, 10.0), (199, 15.0), (300, 15.5)])  # the final one at MAX_ITER
        for run, values in final.items():
            early = {i: {"pseudo/precision@0.5": 0.0} for i in range(0, 50, 10)}  # the first half does not count
            late = {i: {"pseudo/precision@0.5": 0.9, "pseudo/recall@0.5": 0.5, "pseudo/labels_per_image": 1.0}
                    for i in range(50, 100, 10)}
            _write_run(dirs[run], [(99, float(values[seed - 1]))], {**early, **late},
                       teacher=run in (*script.SEMI_ROWS, "sup_only_ema"))
    text = script.table(script.collect(args), args)
    lines = text.splitlines()
    assert "| Row | seed 1 | seed 2 | seed 3 | mean | std |" in lines
    assert "| sup-only | 20.0 | 22.0 | 24.0 | 22.0 | 2.0 |" in lines  # sample std of 20, 22, 24
    assert "| Semi-DETR | 30.0 | 31.0 | 32.0 | 31.0 | 1.0 |" in lines
    assert "| 100% labels | 40.0 | 42.0 | 44.0 | 42.0 | 2.0 |" in lines
    assert "| Semi-DETR | 45% |" in lines  # (31 - 22) / (42 - 22)
    assert any(line.startswith("Semi-DETR - sup-only = +9.0 AP; twice the larger std = 4.0 AP: above.") for line in lines)
    assert "SSOD baseline - sup-only = +1.0 AP." in lines
    # Paired by seed: the differences to the seed's own sup-only (20, 22, 24), their mean and sample std.
    paired = lines.index("Paired by seed (each row minus its seed's sup-only, seeds where both ran):")
    assert lines[paired + 2] == "| Row | seed 1 | seed 2 | seed 3 | mean | std |"
    assert "| Semi-DETR | +10.0 | +9.0 | +8.0 | +9.0 | 1.0 |" in lines[paired:]
    assert "| sup-only + EMA teacher (w_u 0) | +4.0 | +3.0 | +2.0 | +3.0 | 1.0 |" in lines[paired:]
    assert not any(line.startswith("| sup-only |") for line in lines[paired:paired + 12])
    assert "| SSOD baseline | 0.900 | 0.500 | - | 1.00 |" in lines
    # The EMA control: its own row, and the part of Semi-DETR's gain the unlabeled images bring.
    assert "| sup-only + EMA teacher (w_u 0) | 24.0 | 25.0 | 26.0 | 25.0 | 1.0 |" in lines
    assert ("Semi-DETR - (sup-only + EMA teacher) = +6.0 AP (seeds 1, 2, 3); sup-only + EMA teacher - sup-only = "
            "+3.0 AP (seeds 1, 2, 3).") in lines
    assert not any(line.startswith("| sup-only + EMA teacher (w_u 0) | 0.900") for line in lines)  # no pseudo row
    # Its last quarter holds two evaluations (200 and 300): the report says the gain is their difference.
    assert any(line.startswith("- burn_in seed 1: 100: 10.0, 200: 15.0, 300: 15.5; gain over the last quarter +0.4 AP "
                               "(two evaluations: their difference) (plateau)") for line in lines)
    assert "- semidetr seed 2: 100: 31.0" in lines  # a row's curve (one point here: no gain to report)


def test_a_row_missing_a_seed_is_compared_with_sup_only_on_its_own_seeds(script, tmp_path):
    """+ SHM lacks seed 3 and Semi-DETR seed 1; the ceiling has seeds 1-2 only. A share or a difference over
    sup-only's mean on all seeds would mix the folds' spread into it (fold 3 is the weakest here)."""
    args = SimpleNamespace(burn_in=300, iters=100, curve_period=100, rows=["sup_only", "ssod_baseline", "shm", "semidetr"],
                           seeds=[1, 2, 3], settings=["shapes_lite"], out=str(tmp_path))
    final = {"sup_only": (30, 32, 20), "ssod_baseline": (33, 35, 23), "shm": (36, 38, None),
             "semidetr": (None, 36, 26), "ceiling": (50, 52, None)}
    for seed in (1, 2, 3):
        dirs = script.run_dirs("shapes_lite", seed, args)
        _write_run(dirs["burn_in"], [(99, 10.0), (300, 15.0)])
        for run, values in final.items():
            if values[seed - 1] is not None:
                _write_run(dirs[run], [(99, float(values[seed - 1]))], teacher=run in script.SEMI_ROWS)
    lines = script.table(script.collect(args), args).splitlines()
    # The ceiling's mean (51) against sup-only's over all three seeds (27.33).
    assert "Gap sup-only -> 100% labels: 23.7 AP (100% labels over seeds 1, 2, sup-only over seeds 1, 2, 3)." in lines
    assert "| SSOD baseline | 13% |" in lines  # 3 / 23.67, every seed
    assert "| + SHM | 30% (seeds 1, 2) |" in lines  # (37 - 31) / (51 - 31); 37% over sup-only's three seeds
    assert "| Semi-DETR | 20% (seeds 2, 3) |" in lines  # (31 - 26) / (51 - 26); 16% over all of sup-only
    assert "SSOD baseline - sup-only = +3.0 AP." in lines
    # (36, 26) against (32, 20): +5.0 over the seeds both ran; sample stds 7.07 and 8.49.
    assert "Semi-DETR - sup-only = +5.0 AP (seeds 2, 3); twice the larger std = 17.0 AP: not above." in lines


def test_plateau_gain_is_the_last_quarters_fitted_slope_not_a_difference_of_two_noisy_points(script):
    period = 250
    # shapes_lite 5% burn-in, 6000-8000 (evaluations logged at k * 250 - 1, the final one at 8000): flat within
    # +-1 AP; its end minus its 3/4 point is +1.7, the fitted line gains +0.53 over the quarter.
    noisy_flat = [(i - 1, ap) for i, ap in zip(range(250, 6000, 250), range(1, 100))]
    noisy_flat += list(zip((5999, 6249, 6499, 6749, 6999, 7249, 7499, 7749, 8000),
                           (18.6, 20.1, 19.3, 19.9, 20.7, 20.6, 18.9, 19.2, 20.3)))
    assert script.plateau_gain(noisy_flat, period) == pytest.approx(0.5333, abs=1e-3)
    # Still learning: 3750-5000 of the same run (+4.0 between its end points, +3.36 fitted).
    rising = [(3749, 13.7), (3999, 15.6), (4249, 14.6), (4499, 16.0), (4749, 16.3), (5000, 17.7)]
    rising = [(i - 1, 0.0) for i in range(250, 3750, 250)] + rising
    assert script.plateau_gain(rising, period) == pytest.approx(3.357, abs=1e-3)
    assert script.plateau_gain([(99, 5.0)], 100) is None  # one evaluation: nothing to fit
    assert script.plateau_gain([], 100) is None


def test_report_shows_each_rows_pseudo_label_trajectory_by_fifth(script, tmp_path):
    """A collapse (labels / image falling to 0) is visible per fifth of the run, averaged over the seeds; precision
    is weighted by the labels it rates (a step without labels logs precision 0, which must not count); a span
    without pseudo labels logged shows '-'."""
    args = SimpleNamespace(burn_in=300, iters=100, curve_period=100, rows=["sup_only", "ssod_baseline", "semidetr"],
                           seeds=[1, 2], settings=["shapes_lite"], out=str(tmp_path))
    for seed in (1, 2):
        dirs = script.run_dirs("shapes_lite", seed, args)
        _write_run(dirs["sup_only"], [(99, 20.0)])
        # Logged every 10 iterations: 2 records per fifth of 100 iterations; labels 1.0, 0.8, 0.6, 0.4 + seed
        # offset, then none (precision logged as 0).
        collapse = {i: {"pseudo/labels_per_image": 1.0 - 0.2 * (i // 20) + 0.1 * (seed - 1),
                        "pseudo/precision@0.5": 0.5} for i in range(0, 80, 10)}
        collapse.update({i: {"pseudo/labels_per_image": 0.0, "pseudo/precision@0.5": 0.0} for i in (80, 90)})
        _write_run(dirs["ssod_baseline"], [(99, 21.0)], collapse, teacher=True)
        late_only = {60: {"pseudo/labels_per_image": 3.0, "pseudo/precision@0.5": 1.0},  # weighted: 0.75
                     70: {"pseudo/labels_per_image": 1.0, "pseudo/precision@0.5": 0.0},
                     **{i: {"pseudo/labels_per_image": 2.0, "pseudo/precision@0.5": 0.75} for i in (80, 90)}}
        _write_run(dirs["semidetr"], [(99, 22.0)], late_only, teacher=True)
    lines = script.table(script.collect(args), args).splitlines()
    assert "| Row | 0-20% | 20-40% | 40-60% | 60-80% | 80-100% |" in lines
    assert "| SSOD baseline | 1.05 (0.50) | 0.85 (0.50) | 0.65 (0.50) | 0.45 (0.50) | 0.00 (-) |" in lines
    assert "| Semi-DETR | - (-) | - (-) | - (-) | 2.00 (0.75) | 2.00 (0.75) |" in lines
    assert not any(line.startswith("| sup-only | ") and "(" in line for line in lines)


def test_an_evaluation_repeated_by_a_resume_counts_once_with_its_later_value(script, tmp_path):
    run_dir = tmp_path / "run"
    # Killed after the evaluation at 199, resumed from the checkpoint at 100: 199 is evaluated again.
    _write_run(str(run_dir), [(99, 10.0), (199, 12.0), (199, 13.0), (300, 15.0)])
    summary = script.summarize_run(str(run_dir))
    assert summary["curve"] == [(99, 10.0), (199, 13.0), (300, 15.0)]
    assert summary["AP"] == 15.0


def test_records_superseded_by_a_restart_are_dropped_and_a_torn_line_is_skipped(script, tmp_path, capsys):
    """A row that died at iteration 219 before its first checkpoint restarts from scratch and appends to the
    same metrics.json: the dead stretch's pseudo-label statistics must not count (here they would halve the
    first fifth's labels per image). A resume from the checkpoint at 100 likewise replaces 100.. of the first
    attempt; the torn last line of the killed attempt is skipped with a warning."""
    run_dir = tmp_path / "run"
    os.makedirs(run_dir)
    with open(run_dir / "metrics.json", "w") as f:
        for iteration in range(0, 220, 10):  # the attempt that died (no checkpoint)
            f.write(json.dumps({"iteration": iteration, "pseudo/labels_per_image": 0.0}) + "\n")
        f.write('{"iteration": 220, "pseudo/lab')  # killed while writing
        f.write("\n")
        for iteration in range(0, 160, 10):  # the restart, then killed at 150 after its checkpoint at 100
            f.write(json.dumps({"iteration": iteration, "pseudo/labels_per_image": 1.0}) + "\n")
        for iteration in range(100, 300, 10):  # resumed from the checkpoint at 100
            f.write(json.dumps({"iteration": iteration, "pseudo/labels_per_image": 2.0}) + "\n")
        f.write(json.dumps({"iteration": 299, "teacher/bbox/AP": 30.0, "teacher/bbox/AP50": 60.0}) + "\n")
    open(run_dir / "model_final.pth", "wb").close()
    records = script.read_metrics(str(run_dir))
    assert [r["iteration"] for r in records] == [*range(0, 300, 10), 299]
    assert [r["pseudo/labels_per_image"] for r in records[:-1]] == [1.0] * 10 + [2.0] * 20
    assert "skipped 1 lines" in capsys.readouterr().err
    assert script.final_ap(str(run_dir / "metrics.json"))["AP"] == 30.0


def test_an_unfinished_run_is_reported_as_missing(script, tmp_path):
    args = SimpleNamespace(burn_in=300, iters=100, curve_period=100, rows=["sup_only"], seeds=[1],
                           settings=["shapes_lite"], out=str(tmp_path))
    dirs = script.run_dirs("shapes_lite", 1, args)
    _write_run(dirs["sup_only"], [(99, 20.0)])
    os.remove(os.path.join(dirs["sup_only"], "model_final.pth"))  # interrupted: no final model
    assert script.summarize_run(dirs["sup_only"]) is None
    assert "| sup-only | - | - | - |" in script.table(script.collect(args), args).splitlines()


def test_a_longer_burn_in_continues_the_finished_shorter_one(script, tmp_path):
    """burn_in3000 starts from burn_in2000's final checkpoint (linked, not copied), with its metrics copied
    (appending to them must not change the shorter run's), and --resume then continues at iteration 2000."""
    seed_dir = tmp_path / "shapes_lite" / "seed1"
    _write_run(str(seed_dir / "burn_in2000"), [(999, 5.0), (2000, 8.0)])
    (seed_dir / "burn_in2000" / "model_final.pth").write_bytes(b"weights at 2000")
    _write_run(str(seed_dir / "burn_in1000"), [(1000, 5.0)])
    os.makedirs(seed_dir / "burn_in2500")  # unfinished: not a source
    longer = seed_dir / "burn_in3000"
    os.makedirs(longer)
    assert script.extend_finished_shorter_run(str(longer)) == str(seed_dir / "burn_in2000")
    assert (longer / "last_checkpoint").read_text() == "model_0001999.pth"
    assert os.path.samefile(longer / "model_0001999.pth", seed_dir / "burn_in2000" / "model_final.pth")
    with open(longer / "metrics.json", "a") as f:
        f.write(json.dumps({"iteration": 2999, "bbox/AP": 9.0, "bbox/AP50": 18.0}) + "\n")
    assert script.summarize_run(str(seed_dir / "burn_in2000"))["curve"] == [(999, 5.0), (2000, 8.0)]
    assert not (longer / "model_final.pth").exists()  # not finished: it trains (resumes)
    assert script.extend_finished_shorter_run(str(longer)) is None  # started runs resume themselves
    fresh = seed_dir / "burn_in500"
    os.makedirs(fresh)
    assert script.extend_finished_shorter_run(str(fresh)) is None  # nothing shorter: from scratch


def test_extension_waits_for_the_shorter_runs_final_evaluation(script, tmp_path):
    """model_final.pth exists before the final evaluation is logged: the copy waits for the run's lock."""
    seed_dir = tmp_path / "seed1"
    _write_run(str(seed_dir / "burn_in100"), [(49, 5.0)])
    holder = open(seed_dir / "burn_in100" / ".lock", "w")
    fcntl.flock(holder, fcntl.LOCK_EX)  # still evaluating
    os.makedirs(seed_dir / "burn_in200")
    waiter = threading.Thread(target=script.extend_finished_shorter_run, args=(str(seed_dir / "burn_in200"),))
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive()
    with open(seed_dir / "burn_in100" / "metrics.json", "a") as f:
        f.write(json.dumps({"iteration": 100, "bbox/AP": 7.0, "bbox/AP50": 14.0}) + "\n")
    fcntl.flock(holder, fcntl.LOCK_UN)
    holder.close()
    waiter.join(timeout=10)
    assert [ap for _, ap in script.summarize_run(str(seed_dir / "burn_in100"))["curve"]] == [5.0, 7.0]
    with open(seed_dir / "burn_in200" / "metrics.json") as f:
        assert '"bbox/AP": 7.0' in f.read()


def _flat_config(config_path, opts=()):
    from detectron2.config import get_cfg

    from semidetr.config import add_semidetr_config

    cfg = get_cfg()
    add_semidetr_config(cfg)
    cfg.merge_from_file(config_path)
    cfg.merge_from_list(list(opts))

    def flatten(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from flatten(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    return dict(flatten(cfg))


def _changed(before, after, ignore=("SOLVER.", "OUTPUT_DIR")):
    return {key: value for key, value in after.items() if before[key] != value and not key.startswith(ignore)}


@pytest.mark.parametrize("setting", ["shapes_lite", "shapes_lite10", "bccd10"])
def test_a_rows_component_is_its_ablation_configs_delta(script, setting):
    """What a row changes on the setting's config is what its configs/ablations/ file changes on its COCO base
    (same keys, same values), besides the row's schedule (T1 = half its iterations, no EMA warm-up)."""
    args = SimpleNamespace(iters=100)
    semidetr_config = os.path.join(script.QUICK, script.SETTINGS[setting][2])
    ssod_config = os.path.join(script.QUICK, script.SETTINGS[setting][1])
    assert set(script.ROW_ABLATIONS) == {"shm", "shm_cqc", "ssod_ignore_empty", "sup_only_ema"}
    assert set(script.ROW_BASES) == set(script.ROWS + script.EXTRA_ROWS)
    for row, ablation in script.ROW_ABLATIONS.items():
        path = os.path.join(script.ABLATIONS, ablation)
        coco_base = os.path.normpath(os.path.join(script.ABLATIONS, _base_of(path)))
        expected = _changed(_flat_config(coco_base), _flat_config(path))
        assert expected, ablation
        base = os.path.join(script.QUICK, script.row_config(row, setting))
        with_shm = row in ("shm", "shm_cqc")
        assert base == (semidetr_config if with_shm else ssod_config)
        opts = script.row_overrides(row, args)
        schedule = {"SEMI.EMA_WARMUP": False, **({"SEMIDETR.SHM.O2M_ITERS": 50} if with_shm else {})}
        got = _changed(_flat_config(base), _flat_config(base, opts))
        assert {k: v for k, v in got.items() if k not in schedule} == expected, row
        assert all(got.get(k, _flat_config(base)[k]) == v for k, v in schedule.items()), row
    # Semi-DETR is the setting's config itself; sup-only has no component.
    assert script.row_overrides("sup_only", args) == []
    assert script.row_overrides("semidetr", args) == ["SEMI.EMA_WARMUP", "False", "SEMIDETR.SHM.O2M_ITERS", "50"]


def _base_of(path):
    import yaml

    with open(path) as f:
        return yaml.safe_load(f)["_BASE_"]


def test_an_ablation_config_without_a_component_is_refused(script, tmp_path, monkeypatch):
    (tmp_path / "empty.yaml").write_text('_BASE_: "x.yaml"\nSOLVER:\n  MAX_ITER: 10\n')
    monkeypatch.setattr(script, "ABLATIONS", str(tmp_path))
    with pytest.raises(ValueError, match="empty.yaml sets no component key"):
        script.ablation_overrides("empty.yaml")


def test_a_report_on_a_new_machine_reads_the_archived_summaries(script, tmp_path):
    """--archive keeps each finished run's summary in the repository: a report on a machine that has none of
    the run directories prints the same tables; a run finished on neither is missing ('-')."""
    args = SimpleNamespace(burn_in=300, iters=100, curve_period=50, rows=["sup_only", "semidetr"], seeds=[1, 2],
                           settings=["shapes_lite"], out=str(tmp_path / "runs"), archive=str(tmp_path / "archive"))
    for seed, (sup, semi) in ((1, (20.0, 25.0)), (2, (22.0, 27.0))):
        dirs = script.run_dirs("shapes_lite", seed, args)
        _write_run(dirs["burn_in"], [(99, 10.0), (199, 15.0), (300, 15.5)])
        _write_run(dirs["sup_only"], [(99, sup)])
        if seed == 1:  # seed 2's Semi-DETR row never finished
            pseudo = {i: {"pseudo/precision@0.5": 0.8, "pseudo/labels_per_image": 1.5} for i in range(50, 100, 10)}
            _write_run(dirs["semidetr"], [(49, semi - 1), (99, semi)], pseudo, teacher=True)
    on_this_machine = script.table(script.collect(args), args)
    stored = json.loads((tmp_path / "archive/shapes_lite/seed1/rows_from300_iters100/semidetr.json").read_text())
    assert stored["run"] == "shapes_lite/seed1/rows_from300_iters100/semidetr" and stored["summary"]["AP"] == 25.0
    assert not (tmp_path / "archive/shapes_lite/seed2/rows_from300_iters100/semidetr.json").exists()

    archive_file = tmp_path / "archive/shapes_lite/seed1/rows_from300_iters100/semidetr.json"
    os.utime(archive_file, (0, 0))
    script.collect(args)  # a second report leaves an unchanged summary's file as it was
    assert archive_file.stat().st_mtime == 0

    import shutil
    shutil.rmtree(tmp_path / "runs")  # a new machine: no run directory, only the repository's archive
    lines = script.table(script.collect(args), args).splitlines()
    assert lines == on_this_machine.splitlines()
    assert "| sup-only | 20.0 | 22.0 | 21.0 | 1.4 |" in lines
    assert "| Semi-DETR | 25.0 | - | 25.0 | - |" in lines
    assert any(line.startswith("- semidetr seed 1: 50: 24.0, 100: 25.0") for line in lines)  # its curve
    args.archive = None  # without the archive, nothing is left to report
    assert "| sup-only | - | - | - | - |" in script.table(script.collect(args), args).splitlines()


def test_a_burn_in_that_trains_alone_takes_all_threads_and_the_rows_share_them(script, tmp_path, monkeypatch):
    threads_of = {}

    def fake_run_training(config, out_dir, opts, threads, extend=False):
        threads_of[os.path.basename(out_dir)] = threads
        return {"AP": 1.0, "AP50": 2.0, "iteration": 0}

    monkeypatch.setattr(script, "run_training", fake_run_training)
    args = SimpleNamespace(burn_in=300, iters=100, curve_period=50, rows=["sup_only", "semidetr"], jobs=2, threads=4,
                           out=str(tmp_path), no_ceiling=True, ceiling_only=False, device="cpu")
    script.run_setting("shapes_lite", 1, args, script.JobQueue(2), (0, 0), burn_in_alone=True)
    assert threads_of == {"burn_in300": 4, "sup_only": 2, "semidetr": 2}
    threads_of.clear()
    script.run_setting("shapes_lite", 1, args, script.JobQueue(2), (0, 0))  # beside other seeds: its share
    assert threads_of == {"burn_in300": 2, "sup_only": 2, "semidetr": 2}
    calls = []  # what main() decides, per command line
    monkeypatch.setattr(script, "run_setting", lambda *a: calls.append(a[-1]) or {})
    monkeypatch.setattr(script, "collect", lambda args: {})
    monkeypatch.setattr(script, "table", lambda results, args: "")
    for seeds, ceiling, expected in ((["1", "2"], ["--no-ceiling"], [False, False]), (["1"], [], [False]),
                                     (["1"], ["--no-ceiling"], [True])):
        calls.clear()
        monkeypatch.setattr(script.sys, "argv", ["run_ssod_benchmarks.py", "--settings", "shapes_lite", "--seeds",
                                                 *seeds, *ceiling, "--out", str(tmp_path / "main")])
        script.main()
        assert calls == expected, (seeds, ceiling)


def test_each_run_is_archived_as_soon_as_it_finishes(script, tmp_path, monkeypatch):
    """A session that ends while later rows train still leaves the finished runs' summaries in the archive."""
    def fake_run_training(config, out_dir, opts, threads, extend=False):
        _write_run(out_dir, [(99, 10.0)], teacher="SEMI.EMA_WARMUP" in opts)
        return {"AP": 10.0, "AP50": 20.0, "iteration": 99}

    monkeypatch.setattr(script, "run_training", fake_run_training)
    args = SimpleNamespace(burn_in=300, iters=100, curve_period=50, rows=["sup_only", "semidetr"], jobs=1, threads=1,
                           out=str(tmp_path / "runs"), no_ceiling=True, ceiling_only=False, device="cpu", archive=str(tmp_path / "archive"))
    script.run_setting("shapes_lite", 1, args, script.JobQueue(1), (0, 0))
    archived = sorted(str(p.relative_to(tmp_path / "archive")) for p in (tmp_path / "archive").rglob("*.json"))
    assert archived == ["shapes_lite/seed1/burn_in300.json", "shapes_lite/seed1/rows_from300_iters100/semidetr.json",
                        "shapes_lite/seed1/rows_from300_iters100/sup_only.json"]


def test_paired_differences_leave_out_a_seed_missing_from_either_row(script, tmp_path):
    args = SimpleNamespace(burn_in=300, iters=100, curve_period=100,
                           rows=["sup_only", "sup_only_ema", "ssod_baseline", "semidetr"],
                           seeds=[1, 2, 3], settings=["shapes_lite"], out=str(tmp_path))
    dirs = {seed: script.run_dirs("shapes_lite", seed, args) for seed in (1, 2, 3)}
    for seed, sup in ((1, 20.0), (2, 26.0)):  # seed 3 has no sup-only
        _write_run(dirs[seed]["sup_only"], [(99, sup)])
    _write_run(dirs[2]["semidetr"], [(99, 29.0)], teacher=True)  # seed 1 has no Semi-DETR
    for seed, ap in ((1, 23.0), (2, 27.0), (3, 50.0)):  # the EMA control on every seed
        _write_run(dirs[seed]["sup_only_ema"], [(99, ap)], teacher=True)
    for seed, ap in ((1, 21.0), (2, 28.0), (3, 40.0)):
        _write_run(dirs[seed]["ssod_baseline"], [(99, ap)], teacher=True)
    lines = script.table(script.collect(args), args).splitlines()
    paired = lines[lines.index("Paired by seed (each row minus its seed's sup-only, seeds where both ran):"):]
    assert "| Semi-DETR | - | +3.0 | - | +3.0 | - |" in paired
    assert "| SSOD baseline | +1.0 | +2.0 | - | +1.5 | 0.7 |" in paired
    # The unpaired means differ: the SSOD baseline's mean includes seed 3, sup-only's does not.
    assert "| SSOD baseline | 21.0 | 28.0 | 40.0 | 29.7 | 9.6 |" in lines
    # The EMA control's differences pair by seed too (unpaired: 29.0 - 33.3 and 33.3 - 23.0).
    assert ("Semi-DETR - (sup-only + EMA teacher) = +2.0 AP (seeds 2); sup-only + EMA teacher - sup-only = "
            "+2.0 AP (seeds 1, 2).") in lines


def test_each_training_segment_records_its_machine_and_the_report_names_it(script, tmp_path, monkeypatch, capsys):
    """A retrain on another machine type does not reproduce a run's evaluations: every start and resume
    appends its machine to the run's machines.jsonl, a resume on another machine is warned about, the summary
    (and so the archive) keeps the segments, and the report says which machine trained which runs."""
    real = script.this_machine(1, "cpu")
    assert {"cpu", "cpus", "cpu_capability", "threads", "device", "gpu", "torch"} <= set(real) and real["gpu"] is None
    machine_a = {**real, "cpu": "CPU A"}
    machine_b = {**real, "cpu": "CPU B", "cpu_capability": "AVX2"}
    current = [machine_a]
    monkeypatch.setattr(script, "this_machine", lambda threads, device: {**current[0], "threads": threads,
                                                                         "device": device})

    real_subprocess_run = script.subprocess.run

    def fake_subprocess_run(command, **kwargs):  # trains to the end: the final checkpoint and evaluation
        if "OUTPUT_DIR" not in command:
            return real_subprocess_run(command, **kwargs)  # git, for the archive's commit
        out_dir = command[command.index("OUTPUT_DIR") + 1]
        _write_run(out_dir, [(99, 10.0)])
        return SimpleNamespace(returncode=0)

    monkeypatch.setattr(script.subprocess, "run", fake_subprocess_run)
    args = SimpleNamespace(burn_in=300, iters=100, curve_period=50, rows=["sup_only"], seeds=[1],
                           settings=["shapes_lite"], out=str(tmp_path / "runs"), archive=str(tmp_path / "archive"))
    dirs = script.run_dirs("shapes_lite", 1, args)
    run = dirs["burn_in"]
    os.makedirs(run)
    script.record_machine(run, 1, "cpu")  # iterations 0-499 on machine A, then interrupted
    script.record_machine(run, 1, "cpu")  # restarted from scratch on A: one segment
    with open(os.path.join(run, "last_checkpoint"), "w") as f:
        f.write("model_0000499.pth")
    current[0] = machine_b
    assert "warning" not in capsys.readouterr().err
    script.run_training("dino_shapes_lite_cpu.yaml", run, ["MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "300"], 2)
    assert "resumes at iteration 500 on CPU B" in capsys.readouterr().err
    segments = script.machine_segments(run)
    assert [(m["from_iteration"], m["cpu"], m["threads"]) for m in segments] == [(0, "CPU A", 1), (500, "CPU B", 2)]

    _write_run(dirs["sup_only"], [(99, 12.0)])  # a row that predates the record: no machines in its summary
    results = script.collect(args)
    assert "machines" not in results["shapes_lite"][1]["sup_only"]
    archived = json.loads((tmp_path / "archive/shapes_lite/seed1/burn_in300.json").read_text())["summary"]
    assert [m["from_iteration"] for m in archived["machines"]] == [0, 500]
    lines = script.table(results, args).splitlines()
    trained_on = lines[lines.index("Trained on (runs archived before the record have none):") + 2:]
    assert trained_on[0].startswith("- CPU A, ") and trained_on[0].endswith(": burn_in seed 1")
    assert trained_on[1].startswith("- CPU B, ") and "AVX2, 2 threads, cpu" in trained_on[1]
    assert trained_on[1].endswith(": burn_in seed 1 from 500")

    longer = os.path.join(os.path.dirname(run), "burn_in600")  # a continuation keeps the shorter run's record
    os.makedirs(longer)
    script.extend_finished_shorter_run(longer)
    assert script.machine_segments(longer) == segments


def _shipped_burn_in(path, train_split):
    """A weights file as tools/export_weights.py writes it: weights and the description of the run (its config)."""
    import torch
    import yaml

    torch.save({"model": {}, "model_info": {"config": yaml.safe_dump({"DATASETS": {"TRAIN": [train_split]}})}}, path)
    return str(path)


def test_rows_from_given_burn_in_weights_train_no_burn_in_and_live_apart(script, tmp_path, monkeypatch):
    weights = _shipped_burn_in(tmp_path / "shapes_lite_fold2.pth", "shapes_lite_train.2@5")
    runs = _planned_runs(script, tmp_path, monkeypatch, no_ceiling=True, burn_in_weights=weights)
    assert sorted(runs) == [f"shapes_lite/seed2/rows_from-shapes_lite_fold2_iters100/{row}" for row in sorted(script.ROWS)]
    assert all(opts["MODEL.WEIGHTS"] == weights for _, opts in runs.values())
    # Another fold's burn-in would not be this seed's rows, and a file that does not say is refused.
    with pytest.raises(ValueError, match=r"shapes_lite_fold2\.pth was trained on \('shapes_lite_train\.2@5',\), but "
                                         r"these rows train on \('shapes_lite_train\.2@10',\)"):
        _planned_runs(script, tmp_path, monkeypatch, setting="shapes_lite10", burn_in_weights=weights)
    import torch
    torch.save({"model": {}}, tmp_path / "bare.pth")
    with pytest.raises(ValueError, match=r"bare\.pth does not say what it was trained on"):
        _planned_runs(script, tmp_path, monkeypatch, burn_in_weights=str(tmp_path / "bare.pth"))
    # The report names the file as the burn-in (there is no burn-in run to report).
    report = script.table({"shapes_lite": {2: {}}}, SimpleNamespace(burn_in=300, iters=100, curve_period=50,
                                                                    rows=["sup_only"], burn_in_weights=weights))
    assert f"Budget: 300 supervised burn-in iterations ({weights}, not trained here), then 100" in report
    assert f"where every row starts): {weights} (see the budget above)." in report
    monkeypatch.setattr(script.sys, "argv", ["run_ssod_benchmarks.py", "--seeds", "1", "2", "--burn-in-weights", weights])
    with pytest.raises(SystemExit):  # one burn-in file is one setting x seed
        script.main()


def test_o2m_iters_sets_t1_of_the_shm_rows_and_names_their_folder(script, tmp_path, monkeypatch):
    default = _planned_runs(script, tmp_path, monkeypatch, no_ceiling=True)
    assert default["shapes_lite/seed2/rows_from300_iters100/semidetr"][1]["SEMIDETR.SHM.O2M_ITERS"] == "50"
    assert _planned_runs(script, tmp_path, monkeypatch, no_ceiling=True, o2m_iters=50) == default
    longer = _planned_runs(script, tmp_path, monkeypatch, no_ceiling=True, o2m_iters=500)
    assert longer["shapes_lite/seed2/rows_from300_iters100_t1-500/semidetr"][1]["SEMIDETR.SHM.O2M_ITERS"] == "500"
    assert longer["shapes_lite/seed2/rows_from300_iters100_t1-500/shm"][1]["SEMIDETR.SHM.O2M_ITERS"] == "500"
    assert "SEMIDETR.SHM.O2M_ITERS" not in longer["shapes_lite/seed2/rows_from300_iters100_t1-500/ssod_baseline"][1]
    assert "shapes_lite/seed2/burn_in300" in longer  # the burn-in does not depend on T1


def test_results_json_names_each_runs_directory(script, tmp_path, monkeypatch):
    """tools/demo.sh finds the Semi-DETR row's checkpoint there (its folder's name depends on the budget)."""
    monkeypatch.setattr(script.sys, "argv", ["run_ssod_benchmarks.py", "--report", "--settings", "shapes_lite10",
                                             "--seeds", "2", "--burn-in", "300", "--iters", "100", "--o2m-iters",
                                             "200", "--rows", "sup_only", "semidetr", "--out", str(tmp_path)])
    script.main()
    with open(tmp_path / "results.json") as f:
        run_dirs = json.load(f)["run_dirs"]["shapes_lite10"]["2"]
    assert run_dirs["semidetr"] == str(tmp_path / "shapes_lite10/seed2/rows_from300_iters100_t1-200/semidetr")
    assert set(run_dirs) == {"burn_in", "ceiling", "sup_only", "semidetr"}


# ------------------------------------------------------------------------------------------------------
# --burn-in-until-plateau: each seed's burn-in is continued until it passes the plateau test
_RISING = [(99, 10.0), (199, 15.0), (300, 20.0)]  # +3.75 AP fitted over the last quarter: no plateau
_FLAT = [*_RISING[:2], (299, 20.0), (400, 20.2)]  # +0.2 AP over the last quarter (300-400): its plateau


def _until_plateau_runs(script, tmp_path, monkeypatch, burn_in_curves, **overrides):
    """The runs planned for seed 2 (in the order they train, one slot), each burn-in's curve from
    burn_in_curves by its length (a curve not given: the run fails the test if trained)."""
    planned = []

    def fake_run_training(config, out_dir, opts, threads, extend=False):
        planned.append((os.path.relpath(out_dir, tmp_path), dict(zip(opts[::2], opts[1::2]))))
        name = os.path.basename(out_dir)
        curve = burn_in_curves[int(name[len("burn_in"):])] if name.startswith("burn_in") else [(99, 1.0)]
        _write_run(out_dir, curve)
        return {"AP": curve[-1][1], "AP50": 0.0, "iteration": curve[-1][0]}

    monkeypatch.setattr(script, "run_training", fake_run_training)
    args = SimpleNamespace(burn_in=300, burn_in_until_plateau=500, burn_in_step=100, iters=100, curve_period=100,
                           rows=["sup_only", "semidetr"], jobs=1, threads=1, out=str(tmp_path), no_ceiling=False,
                           ceiling_only=False, device="cpu", seeds=[2], settings=["shapes_lite"])
    for key, value in overrides.items():
        setattr(args, key, value)
    script.run_setting("shapes_lite", 2, args, script.JobQueue(1), (0, 0))
    return planned, args


def test_a_burn_in_short_of_its_plateau_is_continued_and_the_rows_start_from_the_first_that_reaches_it(
        script, tmp_path, monkeypatch):
    planned, args = _until_plateau_runs(script, tmp_path, monkeypatch, {300: _RISING, 400: _FLAT})
    names = [name for name, _ in planned]
    # 300 fails the test, 400 passes it: 500 is never trained; the rows start from 400, then the ceiling
    # trains 400 + 100 iterations (after the rows: they are the result).
    assert names == ["shapes_lite/seed2/burn_in300", "shapes_lite/seed2/burn_in400",
                     "shapes_lite/seed2/rows_from400_iters100/sup_only",
                     "shapes_lite/seed2/rows_from400_iters100/semidetr",
                     "ceiling_shapes_lite_train/seed2/ceiling500"]
    opts = dict(planned)
    assert opts["shapes_lite/seed2/burn_in400"]["SOLVER.MAX_ITER"] == "400"
    assert opts["shapes_lite/seed2/rows_from400_iters100/semidetr"]["MODEL.WEIGHTS"].endswith(
        "shapes_lite/seed2/burn_in400/model_final.pth")
    assert opts["ceiling_shapes_lite_train/seed2/ceiling500"]["SOLVER.MAX_ITER"] == "500"
    # The report decides by the same rule: the rows of 400, and each seed's length on its burn-in line.
    assert script.run_dirs("shapes_lite", 2, args)["semidetr"].endswith("rows_from400_iters100/semidetr")
    text = script.table(script.collect(args), args)
    assert "Budget: a supervised burn-in of 300 iterations, continued by 100 at a time until it gains less than 1 AP " \
           "over its last quarter or reaches 500" in text
    assert "(ceiling: its seed's burn-in + 100 supervised iterations with all labels)" in text
    assert "where every row starts): seed 2 20.2 (400 iterations)." in text
    assert "- burn_in seed 2: 100: 10.0, 200: 15.0, 300: 20.0, 400: 20.2; gain over the last quarter +0.2 AP" in text


def test_a_burn_in_that_never_reaches_its_plateau_stops_at_the_maximum(script, tmp_path, monkeypatch):
    rising = {300: _RISING, 400: [*_RISING, (400, 25.0)], 500: [*_RISING, (399, 25.0), (500, 30.0)]}
    planned, _ = _until_plateau_runs(script, tmp_path, monkeypatch, rising, no_ceiling=True)
    assert [name for name, _ in planned] == [
        "shapes_lite/seed2/burn_in300", "shapes_lite/seed2/burn_in400", "shapes_lite/seed2/burn_in500",
        "shapes_lite/seed2/rows_from500_iters100/sup_only", "shapes_lite/seed2/rows_from500_iters100/semidetr"]


def test_a_burn_in_at_its_plateau_at_first_is_not_continued(script, tmp_path, monkeypatch):
    planned, _ = _until_plateau_runs(script, tmp_path, monkeypatch, {300: [(99, 10.0), (199, 15.0), (300, 15.2)]},
                                     no_ceiling=True)
    assert [name for name, _ in planned] == ["shapes_lite/seed2/burn_in300",
                                             "shapes_lite/seed2/rows_from300_iters100/sup_only",
                                             "shapes_lite/seed2/rows_from300_iters100/semidetr"]


def test_until_plateau_a_ceiling_alone_waits_for_its_burn_in_to_be_decided(script, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"the ceiling of shapes_lite seed 2 trains its burn-in's iterations \+ 100, "
                                         r"and that burn-in is not decided \(.*burn_in300 has not finished\)"):
        _until_plateau_runs(script, tmp_path, monkeypatch, {}, ceiling_only=True)
    _write_run(str(tmp_path / "shapes_lite/seed2/burn_in300"), _RISING)
    _write_run(str(tmp_path / "shapes_lite/seed2/burn_in400"), _FLAT)
    planned, _ = _until_plateau_runs(script, tmp_path, monkeypatch, {}, ceiling_only=True)
    assert [(name, opts["SOLVER.MAX_ITER"]) for name, opts in planned] == [
        ("ceiling_shapes_lite_train/seed2/ceiling500", "500")]


@pytest.mark.parametrize("argv", [["--burn-in", "300", "--burn-in-until-plateau", "200"],
                                  ["--burn-in-until-plateau", "3000", "--burn-in-step", "0"],
                                  ["--seeds", "1", "--burn-in-until-plateau", "3000", "--burn-in-weights", "w.pth"]])
def test_burn_in_until_plateau_refuses_arguments_that_contradict_it(script, monkeypatch, argv):
    monkeypatch.setattr(script.sys, "argv", ["run_ssod_benchmarks.py", "--report", "--settings", "shapes_lite", *argv])
    with pytest.raises(SystemExit):
        script.main()
