"""Registration of data sets: BCCD, VOC layout, image folders, COCO json, specs, split names,
unlabeled sets and their monitoring ground truth, built-in names."""
import json
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances
from PIL import Image

from conftest import bccd_root_or_skip
from semidetr.config import add_semidetr_config
from semidetr.data.datasets.bccd import BCCD_ERRATA, register_bccd
from semidetr.data.datasets.catalog import get_unlabeled_dicts, load_unlabeled_with_monitor_gt
from semidetr.data.datasets.coco import register_coco_json
from semidetr.data.datasets.folder import register_image_folder
from semidetr.data.datasets.registry import is_unlabeled, unregister_dataset
from semidetr.data.datasets.splits import (
    UnknownDatasetError,
    ensure_registered,
    register_datasets_from_config,
    register_from_spec,
)
from semidetr.data.datasets.synthetic import SHAPE_CLASSES
from semidetr.data.datasets.validation import DatasetError
from semidetr.data.datasets.voc import register_voc

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def write_voc(root, images, splits):
    """A VOC folder: images = {file_id: (width, height, [(name, xmin, ymin, xmax, ymax, difficult)])}."""
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for index, (file_id, (width, height, objects)) in enumerate(images.items()):
        image_path = os.path.join(root, "JPEGImages", file_id + ".jpg")
        Image.new("RGB", (width, height), (index * 40 % 256, 90, 160)).save(image_path)
        body = "".join(
            f"<object><name>{name}</name><difficult>{int(difficult)}</difficult><bndbox><xmin>{x0}</xmin>"
            f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
            for name, x0, y0, x1, y1, difficult in objects
        )
        xml = (f"<annotation><filename>{file_id}.jpg</filename><size><width>{width}</width><height>{height}</height>"
               f"<depth>3</depth></size>{body}</annotation>")
        with open(os.path.join(root, "Annotations", file_id + ".xml"), "w") as f:
            f.write(xml)
    for split, ids in splits.items():
        with open(os.path.join(root, "ImageSets", "Main", split + ".txt"), "w") as f:
            f.write("\n".join(ids) + "\n")


def tiny_voc(root):
    write_voc(
        root,
        {
            "a": (40, 30, [("dog", 1, 1, 20, 20, False), ("cat", 5, 5, 30, 25, True)]),
            "b": (50, 40, [("cat", 10, 10, 40, 30, False)]),
            "c": (40, 40, [("zebra", 2, 3, 12, 13, False)]),  # a class only in the test split
        },
        {"trainval": ["a", "b"], "test": ["c", "a"]},
    )
    return str(root)


def write_coco(path, image_root, images, annotations, categories):
    os.makedirs(image_root, exist_ok=True)
    for image in images:
        Image.new("RGB", (image["width"], image["height"])).save(os.path.join(image_root, image["file_name"]))
    content = {"images": images, "categories": categories}
    if annotations is not None:
        content["annotations"] = annotations
    with open(path, "w") as f:
        json.dump(content, f)
    return str(path)


def tiny_coco(tmp_path, with_annotations=True):
    images = [{"id": i, "file_name": f"{i}.png", "height": 24, "width": 32} for i in (5, 3, 9, 7)]
    annotations = [
        {"id": 1, "image_id": 3, "category_id": 7, "bbox": [1, 2, 10, 8], "area": 80, "iscrowd": 0},
        {"id": 2, "image_id": 5, "category_id": 3, "bbox": [4, 4, 6, 6], "area": 36, "iscrowd": 0},
        {"id": 3, "image_id": 9, "category_id": 7, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 1},
    ]
    categories = [{"id": 7, "name": "zeta"}, {"id": 3, "name": "alpha"}]  # unsorted, not contiguous
    return write_coco(tmp_path / "instances.json", str(tmp_path / "images"), images,
                      annotations if with_annotations else None, categories), str(tmp_path / "images")


def perfect_predictions(evaluator, dataset_dicts):
    evaluator.reset()
    for record in dataset_dicts:
        annotations = record["annotations"]
        instances = Instances((record["height"], record["width"]))
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.ones(len(boxes))
        instances.pred_classes = torch.tensor([a["category_id"] for a in annotations], dtype=torch.int64)
        evaluator.process([{"image_id": record["image_id"], "height": record["height"], "width": record["width"]}],
                          [{"instances": instances}])
    return evaluator.evaluate()["bbox"]


# --------------------------------------------------------------------------------------------------
# BCCD (the real data set)
# --------------------------------------------------------------------------------------------------
def test_bccd_counts_classes_and_findings():
    bccd_root_or_skip()
    expected = {"train": 197, "val": 82, "trainval": 279, "test": 67}  # 205/87/292/72 minus the errata
    for split, count in expected.items():
        assert len(DatasetCatalog.get(f"bccd_{split}")) == count
    meta = MetadataCatalog.get("bccd_trainval")
    assert meta.thing_classes == ["Platelets", "RBC", "WBC"]  # read from the data, sorted
    assert meta.evaluator_type == "coco"
    assert meta.data_issues == {"degenerate_box": 2, "duplicate_box": 7, "excluded_image": 13, "relabeled_box": 2}
    assert MetadataCatalog.get("bccd_test").data_issues == {"duplicate_box": 1, "excluded_image": 5, "relabeled_box": 1}
    excluded = {file_id for file_id, _ in BCCD_ERRATA.excluded}
    for split in ("trainval", "test"):
        ids = {record["image_id"] for record in DatasetCatalog.get(f"bccd_{split}")}
        assert not ids & excluded


def test_bccd_splits_share_class_ids_and_errata_apply():
    bccd_root_or_skip()
    assert MetadataCatalog.get("bccd_train").thing_classes == MetadataCatalog.get("bccd_test").thing_classes
    wbc = MetadataCatalog.get("bccd_test").thing_classes.index("WBC")
    platelets = MetadataCatalog.get("bccd_train").thing_classes.index("Platelets")
    test = {r["image_id"]: r for r in DatasetCatalog.get("bccd_test")}
    train = {r["image_id"]: r for r in DatasetCatalog.get("bccd_train")}
    # 00135 (test): the 143x135 white cell labeled "Platelets" is a WBC; 00113 (train): a platelet labeled WBC.
    big = [a for a in test["BloodImage_00135"]["annotations"] if a["bbox"] == [41.0, 344.0, 185.0, 480.0]]
    assert [a["category_id"] for a in big] == [wbc]
    small = [a for a in train["BloodImage_00113"]["annotations"] if a["bbox"] == [256.0, 429.0, 288.0, 457.0]]
    assert [a["category_id"] for a in small] == [platelets]
    # The zero-extent box of 00343 is gone; every box is inside its 640x480 image.
    for record in train.values():
        for a in record["annotations"]:
            x0, y0, x1, y1 = a["bbox"]
            assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480


def test_bccd_registration_is_lazy(tmp_path, unique_name):
    prefix = unique_name("bccdlazy")
    names = register_bccd(prefix=prefix, root=str(tmp_path / "nowhere"))  # nothing read: no error
    assert names == [f"{prefix}_{s}" for s in ("train", "val", "trainval", "test")]
    with pytest.raises(DatasetError, match="nowhere"):
        DatasetCatalog.get(names[0])


# --------------------------------------------------------------------------------------------------
# VOC layout
# --------------------------------------------------------------------------------------------------
def test_voc_classes_inferred_and_shared(tmp_path, unique_name):
    root = tiny_voc(tmp_path / "voc")
    trainval, test = unique_name("voc"), unique_name("voc")
    register_voc(trainval, root, "trainval")
    register_voc(test, root, "test")
    # From all XML files of the root, sorted: "zebra" appears only in the test split.
    assert MetadataCatalog.get(trainval).thing_classes == ["cat", "dog", "zebra"]
    assert MetadataCatalog.get(test).thing_classes == ["cat", "dog", "zebra"]
    records = {r["image_id"]: r for r in DatasetCatalog.get(trainval)}
    assert set(records) == {"a", "b"}
    dog, cat = records["a"]["annotations"]
    assert dog["category_id"] == 1 and dog["bbox"] == [0.0, 0.0, 20.0, 20.0]  # 1-based -> 0-based
    assert dog["bbox_mode"] == BoxMode.XYXY_ABS and dog["iscrowd"] == 0
    assert cat["iscrowd"] == 1  # difficult
    assert (records["b"]["height"], records["b"]["width"]) == (40, 50)
    test_records = DatasetCatalog.get(test)
    assert [r["image_id"] for r in test_records] == ["c", "a"]  # split-file order
    assert test_records[0]["annotations"][0]["category_id"] == 2
    assert MetadataCatalog.get(trainval).evaluator_type == "coco"


def test_voc_known_classes_reject_unknown_names(tmp_path, unique_name):
    root = tiny_voc(tmp_path / "voc")
    name = unique_name("voc")
    register_voc(name, root, "test", class_names=["cat", "dog"])
    with pytest.raises(DatasetError, match=r"Unknown class 'zebra' in '.*c\.xml'"):
        DatasetCatalog.get(name)


def test_coco_evaluator_on_voc_set_ignores_difficult(tmp_path, unique_name):
    root = tiny_voc(tmp_path / "voc")
    name = unique_name("voceval")
    register_voc(name, root, "trainval")
    dicts = DatasetCatalog.get(name)
    evaluator = COCOEvaluator(name, output_dir=str(tmp_path / "eval"), tasks=("bbox",), use_fast_impl=False)
    assert perfect_predictions(evaluator, dicts)["AP"] == pytest.approx(100.0)
    # Without predictions for the difficult (crowd) box the score stays perfect: it is ignored.
    for record in dicts:
        record["annotations"] = [a for a in record["annotations"] if not a["iscrowd"]]
    evaluator = COCOEvaluator(name, output_dir=str(tmp_path / "eval"), tasks=("bbox",), use_fast_impl=False)
    assert perfect_predictions(evaluator, dicts)["AP"] == pytest.approx(100.0)


# --------------------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------------------
def _exif_rotated_jpeg(path, size):
    image = Image.new("RGB", size, (10, 200, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display: width and height swap
    image.save(path, exif=exif)


def test_folder_loader(tmp_path, unique_name):
    folder = tmp_path / "unl"
    (folder / "sub").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    Image.new("RGB", (30, 20)).save(folder / "b.png")
    Image.new("RGB", (16, 12)).save(folder / "sub" / "a.jpg")
    _exif_rotated_jpeg(folder / "rot.jpg", (40, 10))
    Image.new("RGB", (5, 5)).save(folder / ".hidden" / "x.jpg")
    (folder / "notes.txt").write_text("not an image")
    name = unique_name("folder")
    register_image_folder(name, str(folder))
    dicts = DatasetCatalog.get(name)
    assert [d["image_id"] for d in dicts] == ["b.png", "rot.jpg", os.path.join("sub", "a.jpg")]
    assert all("annotations" not in d for d in dicts)
    sizes = {d["image_id"]: (d["height"], d["width"]) for d in dicts}
    assert sizes["b.png"] == (20, 30) and sizes["rot.jpg"] == (40, 10)  # EXIF orientation applied
    assert MetadataCatalog.get(name).data_issues == {"non_image_file": 1}
    assert is_unlabeled(name)

    flat = unique_name("folder")
    register_image_folder(flat, str(folder), recursive=False)
    assert [d["image_id"] for d in DatasetCatalog.get(flat)] == ["b.png", "rot.jpg"]


def test_folder_has_no_monitor_ground_truth(tmp_path, unique_name):
    folder = tmp_path / "unl"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.jpg")
    name = unique_name("folder")
    register_image_folder(name, str(folder))
    with pytest.raises(DatasetError, match="no ground-truth source"):
        load_unlabeled_with_monitor_gt(name)


# --------------------------------------------------------------------------------------------------
# COCO json
# --------------------------------------------------------------------------------------------------
def test_coco_json_registration(tmp_path, unique_name):
    json_file, image_root = tiny_coco(tmp_path)
    name = unique_name("coco")
    assert register_coco_json(name, json_file, image_root)
    assert not register_coco_json(name, json_file, image_root)  # idempotent
    meta = MetadataCatalog.get(name)
    # Known before loading (lazy), in category-id order, mapped to 0..K-1.
    assert meta.thing_classes == ["alpha", "zeta"]
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    assert meta.json_file == json_file and meta.evaluator_type == "coco" and meta.image_root == image_root
    dicts = DatasetCatalog.get(name)
    assert [d["image_id"] for d in dicts] == [3, 5, 7, 9]
    by_id = {d["image_id"]: d for d in dicts}
    assert by_id[3]["annotations"][0]["category_id"] == 1 and by_id[5]["annotations"][0]["category_id"] == 0
    assert by_id[3]["annotations"][0]["bbox_mode"] == BoxMode.XYWH_ABS
    assert by_id[7]["annotations"] == []
    assert meta.data_issues == {"no_annotations": 1}
    evaluator = COCOEvaluator(name, output_dir=str(tmp_path / "eval"), tasks=("bbox",), use_fast_impl=False)
    assert perfect_predictions(evaluator, dicts)["AP"] == pytest.approx(100.0)


def test_coco_unlabeled_and_monitor_gt(tmp_path, unique_name):
    json_file, image_root = tiny_coco(tmp_path)
    name = unique_name("cocounl")
    register_coco_json(name, json_file, image_root, unlabeled=True)
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 4 and all("annotations" not in d for d in dicts)
    monitored = {d["image_id"]: d for d in load_unlabeled_with_monitor_gt(name)}
    assert all("annotations" not in d for d in monitored.values())
    assert [a["category_id"] for a in monitored[3]["monitor_annotations"]] == [1]  # contiguous id of 'zeta'
    assert monitored[7]["monitor_annotations"] == []

    info_json, info_root = tiny_coco(tmp_path / "info", with_annotations=False)
    info = unique_name("cocoinfo")
    register_coco_json(info, info_json, info_root, unlabeled=True)
    assert len(DatasetCatalog.get(info)) == 4
    with pytest.raises(DatasetError, match="no ground-truth source"):
        load_unlabeled_with_monitor_gt(info)


# --------------------------------------------------------------------------------------------------
# specs, name resolution, splits
# --------------------------------------------------------------------------------------------------
def test_register_from_spec_resolves_relative_paths(tmp_path, monkeypatch, unique_name):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    tiny_coco(tmp_path)
    tiny_voc(tmp_path / "voc")
    (tmp_path / "unl").mkdir()
    Image.new("RGB", (8, 6)).save(tmp_path / "unl" / "x.jpg")
    coco, unl_json, voc, voc_named, folder = (unique_name(p) for p in ("c", "cu", "v", "vn", "f"))
    assert register_from_spec(f"{coco}=coco:instances.json:images") == coco
    register_from_spec(f"{unl_json}=coco_unlabeled:instances.json:images")
    register_from_spec(f" {voc} = voc:voc:trainval")
    register_from_spec(f"{voc_named}=voc:{tmp_path / 'voc'}:trainval:dog,cat,zebra")
    register_from_spec(f"{folder}=folder:unl")
    register_from_spec(f"{folder}=folder:unl")  # the same spec again: fine
    assert MetadataCatalog.get(coco).json_file == str(tmp_path / "instances.json")
    assert len(DatasetCatalog.get(coco)) == 4 and "annotations" not in DatasetCatalog.get(unl_json)[0]
    assert MetadataCatalog.get(voc).thing_classes == ["cat", "dog", "zebra"]
    assert MetadataCatalog.get(voc_named).thing_classes == ["dog", "cat", "zebra"]
    assert DatasetCatalog.get(folder)[0]["file_name"] == str(tmp_path / "unl" / "x.jpg")
    with pytest.raises(DatasetError, match="already registered"):
        register_from_spec(f"{folder}=folder:elsewhere")
    for bad in ("nameonly", f"{coco}x=coco:only_json", "x=yaml:a:b", "=folder:unl"):
        with pytest.raises(DatasetError, match="NAME=coco:JSON_FILE:IMAGE_ROOT"):
            register_from_spec(bad)


def test_register_from_config(tmp_path, monkeypatch, unique_name):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    tiny_coco(tmp_path)
    name = unique_name("cfg")
    cfg = get_cfg()
    add_semidetr_config(cfg)
    cfg.DATASETS.REGISTER = [f"{name}=coco:instances.json:images"]
    cfg.DATASETS.TRAIN = (f"{name}.1@50",)
    cfg.DATASETS.TRAIN_UNLABELED = (f"{name}.1@50-unlabeled",)
    cfg.DATASETS.TEST = (name,)
    register_datasets_from_config(cfg)
    assert len(DatasetCatalog.get(f"{name}.1@50")) == 2 and len(DatasetCatalog.get(f"{name}.1@50-unlabeled")) == 2
    cfg.DATASETS.TEST = (name + "_typo",)
    with pytest.raises(UnknownDatasetError, match=name):
        register_datasets_from_config(cfg)


def test_ensure_registered_splits_and_close_matches(tmp_path, unique_name):
    root = tiny_voc(tmp_path / "voc")
    write_voc(root, {f"img{i}": (20, 20, [("dog", 2, 2, 10, 10, False)]) for i in range(20)},
              {"many": [f"img{i}" for i in range(20)]})
    base = unique_name("base")
    register_voc(base, root, "many")
    labeled_name = ensure_registered(f"{base}.2@25")
    unlabeled_name = ensure_registered(f"{base}.2@25-unlabeled")
    labeled, unlabeled = DatasetCatalog.get(labeled_name), DatasetCatalog.get(unlabeled_name)
    assert len(labeled) == 5 and len(unlabeled) == 15
    assert all(len(r["annotations"]) == 1 for r in labeled)
    assert all("annotations" not in r for r in unlabeled)
    all_ids = [r["image_id"] for r in DatasetCatalog.get(base)]
    assert sorted(r["image_id"] for r in labeled + unlabeled) == sorted(all_ids)
    assert MetadataCatalog.get(labeled_name).thing_classes == ["cat", "dog", "zebra"]
    assert MetadataCatalog.get(labeled_name).evaluator_type == "coco"
    assert not hasattr(MetadataCatalog.get(labeled_name), "json_file")
    assert ensure_registered(labeled_name) == labeled_name  # idempotent

    with pytest.raises(UnknownDatasetError) as error:
        ensure_registered(base[:-1] + "X")
    assert base in str(error.value) and "Close registered names" in str(error.value)
    with pytest.raises(UnknownDatasetError, match="Cannot resolve split"):
        ensure_registered("no_such_base_qq.1@10")
    with pytest.raises(UnknownDatasetError, match=rf"Did you mean '{base}\.1@10'"):
        ensure_registered(f"{base}.1@10.0")


def test_unlabeled_split_monitor_gt_only_on_request(tmp_path, unique_name, caplog):
    root = tiny_voc(tmp_path / "voc")
    write_voc(root, {f"img{i}": (20, 20, [("cat", 1 + i % 5, 2, 12, 15, False)]) for i in range(10)},
              {"ten": [f"img{i}" for i in range(10)]})
    base = unique_name("mon")
    register_voc(base, root, "ten")
    name = ensure_registered(f"{base}.1@20-unlabeled")
    assert all("annotations" not in r and "monitor_annotations" not in r for r in DatasetCatalog.get(name))
    assert all("annotations" not in r for r in get_unlabeled_dicts(name))
    with caplog.at_level("WARNING"):
        monitored = load_unlabeled_with_monitor_gt(name)
    assert "MONITORING ONLY" in caplog.text
    assert len(monitored) == 8
    truth = {r["file_name"]: r["annotations"] for r in DatasetCatalog.get(base)}
    for record in monitored:
        assert "annotations" not in record
        assert record["monitor_annotations"] == truth[record["file_name"]]
    # A labeled set used as unlabeled data: annotations stripped, its own ground truth for monitoring.
    assert all("annotations" not in r for r in get_unlabeled_dicts(base))
    assert len(load_unlabeled_with_monitor_gt(base)[0]["monitor_annotations"]) == 1


def test_register_twice_with_other_definition_fails(tmp_path, unique_name):
    root = tiny_voc(tmp_path / "voc")
    name = unique_name("dup")
    assert register_voc(name, root, "trainval")
    assert not register_voc(name, root, "trainval")
    with pytest.raises(DatasetError, match="already registered"):
        register_voc(name, root, "test")
    with pytest.raises(DatasetError, match="outside semidetr"):
        register_image_folder("voc_2007_trainval", str(tmp_path))  # detectron2's own name


# --------------------------------------------------------------------------------------------------
# built-in names
# --------------------------------------------------------------------------------------------------
def test_builtin_names():
    for name in ("shapes_train", "shapes_val", "bccd_train", "bccd_val", "bccd_trainval", "bccd_test",
                 "voc07_trainval", "voc07_test", "voc12_trainval", "voc12_trainval-unlabeled", "coco_2017_unlabeled"):
        assert name in DatasetCatalog, name
    assert MetadataCatalog.get("voc07_test").evaluator_type == "coco"
    assert MetadataCatalog.get("voc_2007_test").evaluator_type == "pascal_voc"  # detectron2's, untouched
    assert len(MetadataCatalog.get("voc07_trainval").thing_classes) == 20
    assert is_unlabeled("voc12_trainval-unlabeled") and is_unlabeled("coco_2017_unlabeled")
    # Synthetic classes are known without generating anything; the split inherits them.
    ensure_registered("shapes_train.1@10")
    ensure_registered("shapes_train.1@10-unlabeled")
    assert MetadataCatalog.get("shapes_train.1@10").thing_classes == list(SHAPE_CLASSES)
    assert is_unlabeled("shapes_train.1@10-unlabeled")


def test_coco_partial_files_take_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    split_dir = tmp_path / "coco" / "annotations" / "semi_supervised"
    split_dir.mkdir(parents=True)
    images = [{"id": 1, "file_name": "1.jpg", "height": 8, "width": 8}]
    write_coco(split_dir / "instances_train2017.4@3.json", str(tmp_path / "coco" / "train2017"), images,
               [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3], "area": 9, "iscrowd": 0}],
               [{"id": 1, "name": "person"}])
    name = "coco_2017_train.4@3"
    try:
        assert ensure_registered(name) == name
        assert MetadataCatalog.get(name).json_file == str(split_dir / "instances_train2017.4@3.json")
        assert len(DatasetCatalog.get(name)) == 1
    finally:
        unregister_dataset(name)
