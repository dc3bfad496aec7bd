"""The bad-data policy (semidetr/data/datasets/validation.py) on tiny crafted data sets: each case is either a
clear error naming the file, or skipped/repaired with one warning per kind and a count in the metadata."""
import json
import logging
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

from semidetr.data.datasets.coco import register_coco_json
from semidetr.data.datasets.folder import register_image_folder
from semidetr.data.datasets.validation import DataIssues, DatasetError, sanitize_annotations
from semidetr.data.datasets.voc import register_voc


def write_voc(root, images, splits, image_sizes=None, skip_images=(), raw_xml=None):
    """VOC folder; images = {id: (annotated width, annotated height, [(name, x0, y0, x1, y1)])}.

    image_sizes overrides the size of the written image; skip_images are not written; raw_xml replaces
    the XML text of some ids.
    """
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for file_id, (width, height, objects) in images.items():
        if file_id not in skip_images:
            size = (image_sizes or {}).get(file_id, (width, height))
            Image.new("RGB", size, (120, 60, 30)).save(os.path.join(root, "JPEGImages", file_id + ".jpg"))
        size_tag = f"<size><width>{width}</width><height>{height}</height></size>" if width else ""
        body = "".join(
            f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax>"
            "</bndbox></object>"
            for n, a, b, c, d in objects
        )
        xml = (raw_xml or {}).get(file_id, f"<annotation>{size_tag}{body}</annotation>")
        with open(os.path.join(root, "Annotations", file_id + ".xml"), "w") as f:
            f.write(xml)
    for split, ids in splits.items():
        with open(os.path.join(root, "ImageSets", "Main", split + ".txt"), "w") as f:
            f.write("".join(i + "\n" for i in ids))
    return str(root)


def load_voc(unique_name, root, split, **kwargs):
    name = unique_name()
    register_voc(name, root, split, **kwargs)
    return name, DatasetCatalog.get(name)


def warnings_about(caplog, kind):
    return [r for r in caplog.records if r.levelno == logging.WARNING and f": {kind} x" in r.getMessage()]


OK_BOX = ("a", 2, 2, 10, 10)


def test_missing_image_is_skipped_with_one_warning(tmp_path, unique_name, caplog):
    root = write_voc(tmp_path, {i: (20, 20, [OK_BOX]) for i in ("x", "y", "z")}, {"all": ["x", "y", "z"]},
                     skip_images=("y", "z"))
    with caplog.at_level(logging.WARNING):
        name, dicts = load_voc(unique_name, root, "all")
        DatasetCatalog.get(name)  # loading again does not repeat the warning
    assert [d["image_id"] for d in dicts] == ["x"]
    assert MetadataCatalog.get(name).data_issues == {"missing_image": 2}
    messages = warnings_about(caplog, "missing_image")
    assert len(messages) == 1
    assert "x2" in messages[0].getMessage() and "y.jpg" in messages[0].getMessage()


def test_all_images_missing_is_an_error(tmp_path, unique_name):
    root = write_voc(tmp_path, {"x": (20, 20, [OK_BOX])}, {"all": ["x"]}, skip_images=("x",))
    with pytest.raises(DatasetError, match="No usable image.*missing_image"):
        load_voc(unique_name, root, "all")


def test_empty_labeled_split_is_an_error(tmp_path, unique_name):
    root = write_voc(tmp_path, {"x": (20, 20, [OK_BOX])}, {"empty": []})
    with pytest.raises(DatasetError, match=r"No usable image in VOC split file '.*empty\.txt'"):
        load_voc(unique_name, root, "empty")
    with pytest.raises(DatasetError, match=r"'.*nosuchsplit\.txt' does not exist.*\['empty'\]"):
        load_voc(unique_name, root, "nosuchsplit")


def test_size_mismatch_policy(tmp_path, unique_name):
    images = {
        "same": (40, 20, [("a", 1, 1, 20, 10)]),
        "half": (40, 20, [("a", 1, 1, 20, 10)]),  # image resized to 20x10 after annotation: rescaled
        "other": (40, 20, [("a", 1, 1, 20, 10)]),  # 30x30 image: another picture, skipped
        "nosize": (0, 0, [("a", 1, 1, 5, 5)]),  # no <size>: header size used
    }
    image_sizes = {"half": (20, 10), "other": (30, 30), "nosize": (12, 8)}
    root = write_voc(tmp_path, images, {"all": list(images)}, image_sizes=image_sizes)
    name, dicts = load_voc(unique_name, root, "all")
    by_id = {d["image_id"]: d for d in dicts}
    assert set(by_id) == {"same", "half", "nosize"}
    assert (by_id["half"]["height"], by_id["half"]["width"]) == (10, 20)
    assert by_id["half"]["annotations"][0]["bbox"] == [0.0, 0.0, 10.0, 5.0]
    assert (by_id["nosize"]["height"], by_id["nosize"]["width"]) == (8, 12)
    assert MetadataCatalog.get(name).data_issues == {"missing_size": 1, "size_mismatch": 1, "size_rescaled": 1}


def test_box_policy_on_voc(tmp_path, unique_name):
    objects = [
        ("a", 5, 5, 5, 9),  # zero width: dropped
        ("a", 9, 5, 4, 9),  # negative width: dropped
        ("a", 3, 3, 45, 12),  # sticks out by 15 px: clipped
        ("a", 60, 60, 70, 70),  # entirely outside: dropped
        ("a", 2, 2, 10, 30.5),  # out by 0.5 px: clipped silently
        ("a", 11, 11, 19, 19),
        ("a", 11, 11, 19, 21),  # same class, IoU 81/99 = 0.82 < 0.9: kept
        ("b", 11, 11, 19, 19),  # other class on the same spot: kept
        ("a", 12, 11, 19, 19),  # IoU 72/81 = 0.89 < 0.9: kept
        ("a", 11, 11, 19, 19),  # exact duplicate: dropped
    ]
    root = write_voc(tmp_path, {"x": (30, 30, objects)}, {"all": ["x"]})
    name, dicts = load_voc(unique_name, root, "all")
    boxes = [(a["category_id"], a["bbox"]) for a in dicts[0]["annotations"]]
    assert boxes == [
        (0, [2.0, 2.0, 30.0, 12.0]),
        (0, [1.0, 1.0, 10.0, 30.0]),
        (0, [10.0, 10.0, 19.0, 19.0]),
        (0, [10.0, 10.0, 19.0, 21.0]),
        (1, [10.0, 10.0, 19.0, 19.0]),
        (0, [11.0, 10.0, 19.0, 19.0]),
    ]
    assert MetadataCatalog.get(name).data_issues == {
        "clipped_box": 1, "degenerate_box": 2, "duplicate_box": 1, "outside_box": 1,
    }


def test_unknown_class_is_an_error_naming_the_file(tmp_path, unique_name):
    root = write_voc(tmp_path, {"x": (20, 20, [OK_BOX, ("mystery", 1, 1, 5, 5)])}, {"all": ["x"]})
    with pytest.raises(DatasetError, match=r"Unknown class 'mystery' in '.*Annotations/x\.xml'.*class names"):
        load_voc(unique_name, root, "all", class_names=["a"])
    # With the classes inferred from the data, every name is known.
    name, dicts = load_voc(unique_name, root, "all")
    assert MetadataCatalog.get(name).thing_classes == ["a", "mystery"]


def test_unreadable_and_missing_annotations_are_skipped(tmp_path, unique_name):
    images = {i: (20, 20, [OK_BOX]) for i in ("good", "broken", "nan_box", "gone")}
    root = write_voc(tmp_path, images, {"all": list(images)}, raw_xml={
        "broken": "<annotation><object>",
        "nan_box": "<annotation><object><name>a</name><bndbox><xmin>one</xmin><ymin>1</ymin><xmax>5</xmax>"
                   "<ymax>5</ymax></bndbox></object></annotation>",
    })
    os.remove(os.path.join(root, "Annotations", "gone.xml"))
    name, dicts = load_voc(unique_name, root, "all")
    assert [d["image_id"] for d in dicts] == ["good"]
    assert MetadataCatalog.get(name).data_issues == {"missing_annotation": 1, "unreadable_annotation": 2}


def test_images_without_boxes_are_kept_as_negatives(tmp_path, unique_name):
    images = {"empty": (20, 20, []), "only_bad": (20, 20, [("a", 4, 4, 4, 8)]), "ok": (20, 20, [OK_BOX])}
    root = write_voc(tmp_path, images, {"all": list(images)})
    name, dicts = load_voc(unique_name, root, "all", class_names=["a"])
    assert [len(d["annotations"]) for d in dicts] == [0, 0, 1]
    assert MetadataCatalog.get(name).data_issues == {"degenerate_box": 1, "no_annotations": 2}


def test_unreadable_image_header_is_skipped(tmp_path, unique_name):
    root = write_voc(tmp_path, {"x": (20, 20, [OK_BOX]), "y": (20, 20, [OK_BOX])}, {"all": ["x", "y"]})
    with open(os.path.join(root, "JPEGImages", "y.jpg"), "w") as f:
        f.write("this is text, not a JPEG")
    name, dicts = load_voc(unique_name, root, "all")
    assert [d["image_id"] for d in dicts] == ["x"]
    assert MetadataCatalog.get(name).data_issues == {"unreadable_image": 1}


def test_folder_non_image_files_counted_and_empty_folder_error(tmp_path, unique_name):
    folder = tmp_path / "unl"
    folder.mkdir()
    (folder / "README.md").write_text("hello")
    (folder / "labels.csv").write_text("a,b")
    name = unique_name()
    register_image_folder(name, str(folder))
    with pytest.raises(DatasetError, match=r"No usable image in image folder '.*unl'.*non_image_file"):
        DatasetCatalog.get(name)
    Image.new("RGB", (9, 7)).save(folder / "img.JPG")  # upper-case extension is an image too
    (folder / "fake.png").write_text("not png")
    other = unique_name()
    register_image_folder(other, str(folder))
    dicts = DatasetCatalog.get(other)
    assert [d["image_id"] for d in dicts] == ["img.JPG"]
    assert MetadataCatalog.get(other).data_issues == {"non_image_file": 2, "unreadable_image": 1}
    missing = unique_name()
    register_image_folder(missing, str(tmp_path / "does_not_exist"))
    with pytest.raises(DatasetError, match="does_not_exist' does not exist"):
        DatasetCatalog.get(missing)


def _write_coco(tmp_path, annotations, categories=({"id": 1, "name": "a"},), image_size=(20, 30)):
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.new("RGB", (image_size[1], image_size[0])).save(tmp_path / "img" / "1.png")
    content = {
        "images": [{"id": 1, "file_name": "1.png", "height": 20, "width": 30},
                   {"id": 2, "file_name": "2.png", "height": 20, "width": 30}],  # 2.png is missing
        "annotations": [
            dict(a, id=i + 1, image_id=1, iscrowd=a.get("iscrowd", 0), area=1) for i, a in enumerate(annotations)
        ],
        "categories": list(categories),
    }
    path = tmp_path / "data.json"
    path.write_text(json.dumps(content))
    return str(path), str(tmp_path / "img")


def test_coco_box_policy_and_missing_image(tmp_path, unique_name):
    json_file, image_root = _write_coco(tmp_path, [
        {"category_id": 1, "bbox": [25, 5, 20, 5]},  # x1 = 45 > 30: clipped to width 5
        {"category_id": 1, "bbox": [3, 3, 0, 4]},  # zero width: dropped
        {"category_id": 1, "bbox": [3, 3, -2, 4]},  # negative width: dropped
        {"category_id": 1, "bbox": [40, 2, 5, 5]},  # right of the image: dropped
        {"category_id": 1, "bbox": [2, 2, 8, 8], "iscrowd": 1},
        {"category_id": 1, "bbox": [2, 2, 8, 8], "iscrowd": 1},  # crowd boxes are never duplicates
    ])
    name = unique_name()
    register_coco_json(name, json_file, image_root)
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 1
    assert [a["bbox"] for a in dicts[0]["annotations"]] == [[25.0, 5.0, 5.0, 5.0], [2, 2, 8, 8], [2, 2, 8, 8]]
    assert all(a["bbox_mode"] == BoxMode.XYWH_ABS for a in dicts[0]["annotations"])
    assert MetadataCatalog.get(name).data_issues == {
        "clipped_box": 1, "degenerate_box": 2, "missing_image": 1, "outside_box": 1,
    }


def test_coco_unknown_category_and_bad_json_are_errors(tmp_path, unique_name):
    json_file, image_root = _write_coco(tmp_path, [{"category_id": 5, "bbox": [1, 1, 3, 3]}])
    name = unique_name()
    register_coco_json(name, json_file, image_root)
    with pytest.raises(DatasetError, match=r"data\.json.*category_id=5"):
        DatasetCatalog.get(name)
    empty = tmp_path / "nocats.json"
    empty.write_text(json.dumps({"images": [{"id": 1, "file_name": "1.png", "height": 20, "width": 30}]}))
    other = unique_name()
    register_coco_json(other, str(empty), image_root)
    with pytest.raises(DatasetError, match="nocats.json.*not a valid labeled"):
        DatasetCatalog.get(other)
    missing = unique_name()
    register_coco_json(missing, str(tmp_path / "absent.json"), image_root)
    with pytest.raises(DatasetError, match="absent.json' does not exist"):
        DatasetCatalog.get(missing)


def test_sanitize_duplicates_greedy_in_file_order():
    """A chain A~B, B~C with A and C apart: B duplicates A and is dropped; C then stays (its only
    duplicate partner was dropped), like NMS."""
    def anno(x0, category=0):
        return {"bbox": [x0, 0.0, x0 + 10.0, 10.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": category}

    records = [
        {"file_name": "f", "height": 50, "width": 50, "annotations": [anno(0.0), anno(0.3), anno(0.6), anno(0.0, 1)]},
        {"file_name": "g", "height": 50, "width": 50, "annotations": [anno(0.0), anno(0.2)]},
    ]
    issues = DataIssues()
    # IoU(A, B) = IoU(B, C) = 9.7 / 10.3 = 0.94 >= 0.92 > IoU(A, C) = 9.4 / 10.6 = 0.89
    sanitize_annotations(records, issues, duplicate_iou_thresh=0.92)
    assert [a["bbox"][0] for a in records[0]["annotations"]] == [0.0, 0.6, 0.0]
    assert [a["bbox"][0] for a in records[1]["annotations"]] == [0.0]
    assert issues.as_dict() == {"duplicate_box": 2}
