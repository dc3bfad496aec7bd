"""The README's "Your own data" walk-through, run as written on a generated VOC folder and a plain folder
of unlabeled images holding a corrupt JPEG, a truncated JPEG and a text file: registration with
DATASETS.REGISTER, training (SEMI.MONITOR_UNLABELED_GT on, as in the CPU configs), --eval-only with the
run's config.yaml, tools/infer.py with no config file, tools/plot_run.py. Then what self-describing
checkpoints catch: configs that do not fit, and checkpoints from before (no saved config).

The README's commands are parsed from README.md and run in this process; only the config file of the
training command is swapped for the tiny CPU one (plus overrides shrinking the model), so the test checks
the README's registration, evaluation, inference and plotting text itself."""
import contextlib
import json
import logging
import os
import re
import shlex
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import MICRO_MODEL_ARGS, REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
from detectron2.engine import default_argument_parser  # noqa: E402

import infer  # noqa: E402
import plot_run  # noqa: E402
import train_net  # noqa: E402

CPU_CONFIG = os.path.join(REPO_ROOT, "configs/quick_schedules/semidetr_shapes10_cpu.yaml")
CLASSES = ["circle", "triangle"]  # VOC class names are inferred from the XML files, sorted
TINY_TRAINING = [*MICRO_MODEL_ARGS, "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "3", "SEMI.SAMPLE_RATIO",
                 "(1, 2)", "SEMI.EVAL_MODELS", "('teacher',)", "SEMI.VIS_PERIOD", "0"]


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------
def draw_image(rng, height=96, width=128):
    """A noisy image with one filled circle and one filled triangle; returns (pixels, [(name, box)])."""
    image = rng.integers(0, 90, (height, width, 3), dtype=np.uint8)
    r = int(rng.integers(8, 16))
    cx, cy = int(rng.integers(r, width // 2 - r)), int(rng.integers(r, height - r))
    cv2.circle(image, (cx, cy), r, (230, 60, 60), -1)
    x0, y0 = int(rng.integers(width // 2, width - 30)), int(rng.integers(0, height - 30))
    size = int(rng.integers(14, 28))
    cv2.fillPoly(image, [np.array([[x0, y0 + size], [x0 + size, y0 + size], [x0 + size // 2, y0]], np.int32)],
                 (60, 220, 80))
    return image, [("circle", (cx - r, cy - r, cx + r, cy + r)), ("triangle", (x0, y0, x0 + size, y0 + size))]


def make_voc(root, splits):
    rng = np.random.default_rng(0)
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for split, ids in splits.items():
        for file_id in ids:
            pixels, objects = draw_image(rng)
            Image.fromarray(pixels).save(os.path.join(root, "JPEGImages", file_id + ".jpg"), quality=95)
            body = "".join(f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin>"
                           f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
                           for name, (x0, y0, x1, y1) in objects)
            with open(os.path.join(root, "Annotations", file_id + ".xml"), "w") as f:
                f.write(f"<annotation><filename>{file_id}.jpg</filename><size><width>{pixels.shape[1]}</width>"
                        f"<height>{pixels.shape[0]}</height><depth>3</depth></size>{body}</annotation>")
        with open(os.path.join(root, "ImageSets", "Main", split + ".txt"), "w") as f:
            f.write("\n".join(ids) + "\n")


def make_unlabeled_folder(folder, num_good=3):
    """`num_good` images, plus three files no image can be read from."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(1)
    for index in range(num_good):
        Image.fromarray(draw_image(rng)[0]).save(os.path.join(folder, f"u{index}.jpg"), quality=95)
    with open(os.path.join(folder, "corrupt.jpg"), "wb") as f:
        f.write(b"this is not a JPEG" * 20)  # no image header
    with open(os.path.join(folder, "u0.jpg"), "rb") as f:
        head = f.read()[:2000]  # a valid header, then the data stops: fails on decoding only
    with open(os.path.join(folder, "truncated.jpg"), "wb") as f:
        f.write(head)
    with open(os.path.join(folder, "notes.txt"), "w") as f:
        f.write("taken on tuesday\n")


@contextlib.contextmanager
def captured(logger_name="semidetr"):
    """The records logged under `logger_name` (detectron2's setup_logger stops their propagation)."""
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def text_of(records, level=logging.WARNING):
    return "\n".join(r.getMessage() for r in records if r.levelno >= level)


# --------------------------------------------------------------------------------------------------
# the README's commands
# --------------------------------------------------------------------------------------------------
def readme_commands():
    """The commands of the README's "Your own data" code block, as argument lists."""
    with open(os.path.join(REPO_ROOT, "README.md")) as f:
        text = f.read()
    section = text[text.index("**Your own data**"):text.index("## Train and evaluate")]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = [line.strip() for line in block.replace("\\\n", " ").splitlines()]
    return [shlex.split(line) for line in lines if line and not line.startswith("#")]


def localise(command, paths):
    """The README's paths replaced by the test's (longest first: /data/cells_unlabeled before /data/cells)."""
    pattern = re.compile("|".join(re.escape(p) for p in sorted(paths, key=len, reverse=True)))
    return [pattern.sub(lambda m: paths[m.group(0)], token) for token in command]


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory):
    """Data, the README's commands for it, and the training run (step 1) done once for the module."""
    from detectron2.data import DatasetCatalog

    from semidetr.data.datasets.catalog import unregister_dataset

    root = tmp_path_factory.mktemp("own_data")
    voc, unlabeled, out = str(root / "cells"), str(root / "cells_unlabeled"), str(root / "output" / "cells")
    make_voc(voc, {"trainval": ["t0", "t1", "t2", "t3"], "test": ["v0", "v1"]})
    make_unlabeled_folder(unlabeled)
    paths = {"/data/cells_unlabeled": unlabeled, "/data/cells": voc, "/data/new_images": unlabeled,
             "output/cells": out}
    commands = [localise(c, paths) for c in readme_commands()]
    tools = [os.path.basename(c[1]) for c in commands]
    assert tools == ["train_net.py", "train_net.py", "infer.py", "plot_run.py"], commands

    train = commands[0][2:]
    train[train.index("--config-file") + 1] = CPU_CONFIG
    with captured() as records:
        train_net.main(default_argument_parser().parse_args([*train, *TINY_TRAINING]))
    yield {"commands": commands, "out": out, "voc": voc, "unlabeled": unlabeled, "train_log": records,
           "register": train[train.index("DATASETS.REGISTER") + 1]}
    for name in list(DatasetCatalog.keys()):
        if name.startswith(("cells", "pets")):
            unregister_dataset(name)


def test_training_with_an_unmonitorable_folder(walkthrough):
    """Step 1: SEMI.MONITOR_UNLABELED_GT (on in the CPU config) with a plain folder warns once and trains;
    the folder's bad files were skipped."""
    out = walkthrough["out"]
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    warnings = text_of(walkthrough["train_log"])
    assert warnings.count("'cells_unl' has no ground-truth source") == 1, warnings
    assert "Its images are not monitored" in warnings
    assert re.search(r"non_image_file x1 \(e\.g\. .*notes\.txt\)", warnings)
    assert re.search(r"unreadable_image x1 \(e\.g\. .*corrupt\.jpg\)", warnings)
    metrics = [json.loads(line) for line in open(os.path.join(out, "metrics.json"))]
    train_rows = [m for m in metrics if "total_loss" in m]
    assert train_rows and "pseudo/labels_per_image" in train_rows[-1]
    assert not any("pseudo/recall@0.5" in m for m in metrics)  # nothing of the folder is monitored


def test_eval_only_with_the_runs_config(walkthrough):
    """Step 2 as written: --config-file output/cells/config.yaml --eval-only MODEL.WEIGHTS ...model_final.pth."""
    command = walkthrough["commands"][1]
    results = train_net.main(default_argument_parser().parse_args(command[2:]))
    assert set(results["teacher"]["bbox"]) >= {"AP", "AP50", "AP-circle", "AP-triangle"}


def test_infer_without_config_skips_bad_files(walkthrough):
    """Step 3 as written (no config file) on the unlabeled folder: the three bad files are skipped with
    warnings naming them and counted; every readable image gets its PNG and its entry."""
    command = walkthrough["commands"][2]
    predictions = command[command.index("--output") + 1]
    with captured() as records:
        assert infer.main(command[2:]) == 0
    warnings = text_of(records)
    for name in ("corrupt.jpg", "truncated.jpg", "notes.txt"):
        assert name in warnings, warnings
    summary = text_of(records, logging.INFO).splitlines()[-1]
    assert "Wrote 3 PNGs" in summary and "skipped 3 inputs" in summary, summary
    assert "'unreadable_image': 2" in summary and "'non_image_file': 1" in summary
    detections = json.load(open(os.path.join(predictions, "detections.json")))
    assert sorted(os.path.basename(d["file_name"]) for d in detections) == ["u0.jpg", "u1.jpg", "u2.jpg"]
    assert sorted(os.listdir(predictions)) == ["detections.json", "u0.png", "u1.png", "u2.png"]
    assert all(set(d["class_names"]) <= set(CLASSES) and d["model"] == "teacher" for d in detections)
    for png in ("u0.png", "u1.png", "u2.png"):
        with Image.open(os.path.join(predictions, png)) as image:
            image.verify()


def test_infer_exit_status_when_nothing_is_readable(walkthrough, tmp_path):
    bad = os.path.join(walkthrough["unlabeled"], "corrupt.jpg")
    assert infer.main(["--weights", os.path.join(walkthrough["out"], "model_final.pth"), "--input", bad,
                       "--output", str(tmp_path / "none")]) == 1
    assert not (tmp_path / "none").exists()


def test_plot_run_on_the_run(walkthrough):
    """Step 4 as written: the run's curves."""
    command = walkthrough["commands"][3]
    assert plot_run.main(command[2:]) == 0
    with Image.open(os.path.join(walkthrough["out"], "curves.png")) as image:
        image.verify()


def _run_config(walkthrough, *opts):
    return ["--config-file", os.path.join(walkthrough["out"], "config.yaml"), *opts]


def _with_pets(walkthrough, names):
    """Overrides registering one more VOC set on the same folder with other class names, as DATASETS.TRAIN."""
    name = "pets_" + names.replace(",", "_")  # a registered name keeps its definition: one per class list
    specs = eval(walkthrough["register"]) + [f"{name}=voc:{walkthrough['voc']}:trainval:{names}"]
    return ["DATASETS.REGISTER", str(specs), "DATASETS.TRAIN", f"('{name}',)"]


def test_eval_only_with_a_config_that_does_not_fit(walkthrough):
    """Other classes in the config: one sentence naming the checkpoint's and the config's classes and the
    fix, before any weight is loaded (detectron2 would drop the class head and score a random one)."""
    from semidetr.engine.checkpoint import CheckpointMismatchError

    weights = os.path.join(walkthrough["out"], "model_final.pth")
    run_config = os.path.join(walkthrough["out"], "config.yaml")
    before = open(run_config).read()
    args = _run_config(walkthrough, "--eval-only", "MODEL.WEIGHTS", weights, *_with_pets(walkthrough, "cat,dog,bird"))
    with pytest.raises(CheckpointMismatchError, match=(
            r"model_final\.pth was trained on 2 classes \(circle, triangle\) but this config builds a model for "
            r"3 classes \(cat, dog, bird; from DATASETS.TRAIN\[0\] 'pets_cat_dog_bird'\): evaluate with the config the run "
            r"was trained with \(.*cells/config\.yaml.*, or give tools/infer\.py no --config-file")):
        train_net.main(default_argument_parser().parse_args(args))
    assert open(run_config).read() == before  # the evaluation kept the run's own config.yaml


def test_infer_with_a_config_that_does_not_fit(walkthrough, tmp_path):
    """Same class count, other names: the predictions would be labelled wrongly, so infer.py refuses."""
    weights = os.path.join(walkthrough["out"], "model_final.pth")
    args = ["--weights", weights, "--input", walkthrough["unlabeled"], "--output", str(tmp_path / "p"),
            *_run_config(walkthrough, *_with_pets(walkthrough, "cat,dog"))]
    with captured() as records:
        assert infer.main(args) == 1
    errors = text_of(records, logging.ERROR)
    assert "was trained on 2 classes (circle, triangle) but this config builds a model for 2 classes (cat, dog" \
        in errors, errors
    assert not (tmp_path / "p" / "detections.json").exists()


def test_checkpoint_saves_what_rebuilds_its_model(walkthrough):
    """model_info: the run's config (loadable), the classes, the stage of the weights (engine/stage.py)."""
    from semidetr.engine.checkpoint import read_model_info
    from semidetr.engine.defaults import setup_cfg_from_checkpoint

    weights = os.path.join(walkthrough["out"], "model_final.pth")
    info = read_model_info(weights)
    assert info["class_names"] == CLASSES and info["num_classes"] == 2 and info["iteration"] == 1
    # SHM's T1 of the CPU config (1000) lies beyond the 2 iterations: the weights are one-to-many.
    assert info["stage"] == "one_to_many"
    cfg, _ = setup_cfg_from_checkpoint(weights, ["MODEL.DETR.NUM_QUERIES", "30"])
    assert cfg.MODEL.DETR.NUM_CLASSES == 2 and cfg.MODEL.DETR.HIDDEN_DIM == 64 and not cfg.DATASETS.TRAIN
    assert cfg.SEMIDETR.CQC.ENABLED and cfg.MODEL.META_ARCHITECTURE == "DINO"


def test_checkpoint_without_model_info(walkthrough, tmp_path):
    """A checkpoint from before: infer.py without a config says to pass one; with the run's config it works
    as before; a config with another class count is caught from the class head's size."""
    from semidetr.engine.checkpoint import MODEL_INFO_KEY, CheckpointMismatchError
    from semidetr.engine.defaults import setup_cfg
    from semidetr.engine.trainer import Trainer, load_weights_for_evaluation

    checkpoint = torch.load(os.path.join(walkthrough["out"], "model_final.pth"), map_location="cpu",
                            weights_only=False)
    del checkpoint[MODEL_INFO_KEY]
    old = str(tmp_path / "old.pth")
    torch.save(checkpoint, old)
    image = os.path.join(walkthrough["unlabeled"], "u1.jpg")
    with captured() as records:
        assert infer.main(["--weights", old, "--input", image, "--output", str(tmp_path / "a")]) == 1
    assert "old.pth holds no config" in text_of(records, logging.ERROR)
    assert infer.main(["--weights", old, "--input", image, "--output", str(tmp_path / "b"),
                       *_run_config(walkthrough)]) == 0
    assert json.load(open(tmp_path / "b" / "detections.json"))[0]["file_name"] == image

    cfg = setup_cfg(default_argument_parser().parse_args(_run_config(walkthrough, *_with_pets(walkthrough, "a,b,c"))),
                    for_training=False)
    with pytest.raises(CheckpointMismatchError, match=r"old\.pth was trained on 2 classes \(names not saved"):
        load_weights_for_evaluation(cfg, Trainer.build_model(cfg), old)


def test_monitoring_keeps_the_sets_with_ground_truth(walkthrough):
    """A labeled set used as unlabeled data is monitored next to a plain folder, which is not (one warning)."""
    from semidetr.data.build import load_unlabeled_dicts
    from semidetr.engine.defaults import setup_cfg

    cfg = setup_cfg(default_argument_parser().parse_args(_run_config(
        walkthrough, "DATASETS.TRAIN_UNLABELED", "('cells_test', 'cells_unl')", "SEMI.MONITOR_UNLABELED_GT", "True")),
        for_training=False)
    with captured() as records:
        dicts = load_unlabeled_dicts(cfg)
    monitored = {os.path.basename(d["file_name"]) for d in dicts if "monitor_annotations" in d}
    unmonitored = {os.path.basename(d["file_name"]) for d in dicts if "monitor_annotations" not in d}
    assert monitored == {"v0.jpg", "v1.jpg"} and unmonitored == {"u0.jpg", "u1.jpg", "u2.jpg", "truncated.jpg"}
    assert all(len(d["monitor_annotations"]) == 2 for d in dicts if "monitor_annotations" in d)
    warnings = text_of(records)
    assert warnings.count("has no ground-truth source") == 1 and "'cells_unl'" in warnings
