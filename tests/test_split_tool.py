"""The percentage-split rule (semidetr.data.datasets.splits) and tools/make_semi_splits.py."""
import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
from detectron2.data import DatasetCatalog
from PIL import Image

from semidetr.data.datasets.catalog import unregister_dataset
from semidetr.data.datasets.coco import register_coco_json
from semidetr.data.datasets.splits import ensure_registered, parse_split_name, select_labeled_indices, semi_split_names
from semidetr.data.datasets.validation import DatasetError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO_ROOT, "tools", "make_semi_splits.py")
sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
import make_semi_splits  # noqa: E402


def _coco_content(num_images: int) -> dict:
    """A COCO json with images in a shuffled id order (the tool must follow the file order)."""
    ids = np.random.RandomState(123).permutation(np.arange(1, num_images + 1)).tolist()
    images = [{"id": i, "file_name": f"{i:04d}.jpg", "height": 20, "width": 30} for i in ids]
    annotations = [
        {"id": 10 * i + k, "image_id": i, "category_id": 1 + k % 2, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}
        for i in ids
        for k in range(i % 3)
    ]
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    return {"info": {"description": "test"}, "licenses": [], "images": images, "annotations": annotations,
            "categories": categories}


@pytest.mark.parametrize("num_images,percent", [(1000, 10), (1000, 1), (999, 0.5), (37, 50), (10, 100)])
def test_labeled_count_and_partition(num_images, percent):
    labeled = select_labeled_indices(num_images, percent, fold=1)
    assert len(labeled) == int(percent / 100 * num_images)
    assert len(set(labeled.tolist())) == len(labeled)  # without replacement
    assert np.all(np.diff(labeled) > 0)  # sorted: the splits keep the base order
    unlabeled = np.setdiff1d(np.arange(num_images), labeled)
    assert len(unlabeled) + len(labeled) == num_images
    assert labeled.min() >= 0 and labeled.max() < num_images


def test_deterministic_per_fold_and_folds_differ():
    a = select_labeled_indices(500, 10, fold=1)
    assert np.array_equal(a, select_labeled_indices(500, 10, fold=1))
    assert not np.array_equal(a, select_labeled_indices(500, 10, fold=2))


@pytest.mark.parametrize("fold", [1, 2, 5])
def test_same_selection_as_softteacher(fold):
    # SoftTeacher's prepare_coco_data.py: np.random.seed(seed); np.random.choice(range(N), size, replace=False)
    num_images, percent = 1234, 5
    np.random.seed(fold)
    expected = np.random.choice(range(num_images), size=int(percent / 100.0 * num_images), replace=False)
    assert np.array_equal(select_labeled_indices(num_images, percent, fold), np.sort(expected))


def test_fraction_errors():
    with pytest.raises(DatasetError, match="empty"):
        select_labeled_indices(50, 1, fold=1)  # int(0.5) == 0
    with pytest.raises(DatasetError, match=r"\(0, 100\]"):
        select_labeled_indices(50, 150, fold=1)


def test_split_names_round_trip():
    assert semi_split_names("coco_2017_train", 1, 10) == ("coco_2017_train.1@10", "coco_2017_train.1@10-unlabeled")
    assert semi_split_names("x", 3, 0.5)[0] == "x.3@0.5"
    parsed = parse_split_name("my.data.2@12.5-unlabeled")
    assert parsed == ("my.data", 2, 12.5, True)
    assert parse_split_name("voc12_trainval-unlabeled") is None
    assert parse_split_name("x.1@10.0") is None  # not canonical


def test_tool_writes_reproducible_partition(tmp_path, capsys):
    content = _coco_content(60)
    json_file = tmp_path / "instances_train2017.json"
    json_file.write_text(json.dumps(content))
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    arguments = ["--json", str(json_file), "--percents", "10", "50", "--folds", "1", "2", "--out-dir"]
    make_semi_splits.main(arguments + [str(out_a)])
    printed = capsys.readouterr().out
    make_semi_splits.main(arguments + [str(out_b)])

    expected_files = sorted(
        f"instances_train2017.{fold}@{pct}{suffix}.json"
        for fold in (1, 2)
        for pct in (10, 50)
        for suffix in ("", "-unlabeled")
    )
    assert sorted(os.listdir(out_a)) == expected_files
    for name in expected_files:
        assert (out_a / name).read_bytes() == (out_b / name).read_bytes()
        assert str(out_a / name) in printed

    all_ids = {image["id"] for image in content["images"]}
    for fold in (1, 2):
        labeled = json.loads((out_a / f"instances_train2017.{fold}@10.json").read_text())
        unlabeled = json.loads((out_a / f"instances_train2017.{fold}@10-unlabeled.json").read_text())
        labeled_ids = {image["id"] for image in labeled["images"]}
        unlabeled_ids = {image["id"] for image in unlabeled["images"]}
        assert len(labeled_ids) == 6 and labeled_ids.isdisjoint(unlabeled_ids)
        assert labeled_ids | unlabeled_ids == all_ids
        # The selection is over the json's image order (SoftTeacher), not over sorted ids.
        positions = select_labeled_indices(60, 10, fold)
        assert labeled_ids == {content["images"][p]["id"] for p in positions}
        # Annotations follow their images; categories and info are kept.
        assert {a["image_id"] for a in labeled["annotations"]} <= labeled_ids
        assert len(labeled["annotations"]) + len(unlabeled["annotations"]) == len(content["annotations"])
        assert labeled["categories"] == content["categories"] and labeled["info"] == content["info"]
    first = json.loads((out_a / "instances_train2017.1@10.json").read_text())["images"]
    second = json.loads((out_a / "instances_train2017.2@10.json").read_text())["images"]
    assert first != second


def test_tool_uses_the_in_memory_split_rule(tmp_path):
    """A split file and the in-memory split X.1@20 of the same json select the same images."""
    content = _coco_content(40)
    content["images"].sort(key=lambda image: image["id"])  # load_coco_json orders by id
    for image in content["images"]:
        Image.new("RGB", (30, 20)).save(tmp_path / image["file_name"])
    json_file = tmp_path / "base.json"
    json_file.write_text(json.dumps(content))
    make_semi_splits.make_semi_splits(str(json_file), [20], [1], str(tmp_path / "splits"))
    from_file = {image["id"] for image in json.loads((tmp_path / "splits" / "base.1@20.json").read_text())["images"]}

    base = f"tool_base_{uuid.uuid4().hex[:6]}"
    try:
        register_coco_json(base, str(json_file), str(tmp_path))
        labeled = DatasetCatalog.get(ensure_registered(f"{base}.1@20"))
        assert {record["image_id"] for record in labeled} == from_file
    finally:
        for name in (base, f"{base}.1@20", f"{base}.1@20-unlabeled"):
            unregister_dataset(name)


def test_tool_command_line(tmp_path):
    json_file = tmp_path / "instances_train2017.json"
    json_file.write_text(json.dumps(_coco_content(20)))
    result = subprocess.run(
        [sys.executable, TOOL, "--json", str(json_file), "--percents", "25", "--folds", "3"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out_dir = tmp_path / "semi_supervised"  # default: next to the json
    assert sorted(os.listdir(out_dir)) == ["instances_train2017.3@25-unlabeled.json", "instances_train2017.3@25.json"]
    assert "5 images" in result.stdout and "15 images" in result.stdout
