"""The synthetic "shapes" data set: determinism, box validity, class coverage, cache and registration."""
import filecmp
import json
import multiprocessing
import os
import uuid

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from semidetr.data.datasets import synthetic
from semidetr.data.datasets.catalog import unregister_dataset
from semidetr.data.datasets.synthetic import (
    SHAPE_CLASSES,
    ShapesConfig,
    generate_shapes_split,
    prepare_shapes_split,
    register_shapes,
    render_shapes_image,
)


def _same_tree(a, b):
    comparison = filecmp.dircmp(a, b)
    assert not comparison.left_only and not comparison.right_only and not comparison.diff_files
    for sub in comparison.common_dirs:
        _same_tree(os.path.join(a, sub), os.path.join(b, sub))
    _, mismatch, errors = filecmp.cmpfiles(a, b, comparison.common_files, shallow=False)
    assert not mismatch and not errors


def test_generation_is_deterministic(tmp_path):
    # One run renders in this process, the other in forked workers: same bytes either way.
    json_a = generate_shapes_split(str(tmp_path / "a"), 12, seed=7, num_workers=0)
    json_b = generate_shapes_split(str(tmp_path / "b"), 12, seed=7, num_workers=2)
    _same_tree(str(tmp_path / "a"), str(tmp_path / "b"))
    generate_shapes_split(str(tmp_path / "c"), 12, seed=8, num_workers=0)
    assert open(json_a).read() == open(json_b).read()
    assert open(json_a).read() != open(tmp_path / "c" / "annotations.json").read()


def test_boxes_inside_images_and_all_classes_appear():
    seen = set()
    sizes = []
    for index in range(40):
        pixels, boxes = render_shapes_image(np.random.default_rng([11, index]))
        height, width = pixels.shape[:2]
        assert pixels.dtype == np.uint8 and pixels.shape[2] == 3
        assert 192 <= height <= 320 and 192 <= width <= 320
        for class_index, (x0, y0, x1, y1) in boxes:
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
            seen.add(SHAPE_CLASSES[class_index])
            sizes.append(max(x1 - x0, y1 - y0))
    assert seen == set(SHAPE_CLASSES)
    # Small and large objects both occur (log-uniform sizes from 8 px to half the shorter side).
    assert min(sizes) <= 12 and max(sizes) >= 100


def test_boxes_are_tight_around_the_visible_pixels(monkeypatch):
    """On a black background without clutter, noise or blur, a single object's box is exactly the
    bounding box of the non-black pixels, and several objects' boxes span exactly all of them."""
    monkeypatch.setattr(synthetic, "_background", lambda h, w, rng: np.zeros((h, w, 3), np.float32))
    base = dict(distractors=(0, 0), noise_std=0.0, max_blur=0.0, negative_fraction=0.0, min_contrast=120.0)
    for objects, seed in (((1, 1), 3), ((4, 6), 4)):
        config = ShapesConfig(objects_per_image=objects, **base)
        for index in range(8):
            pixels, boxes = render_shapes_image(np.random.default_rng([seed, index]), config)
            ys, xs = np.nonzero(pixels.any(axis=2))
            assert boxes
            x0 = min(b[0] for _, b in boxes)
            y0 = min(b[1] for _, b in boxes)
            x1 = max(b[2] for _, b in boxes)
            y1 = max(b[3] for _, b in boxes)
            assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_negative_images_and_class_subset():
    config = ShapesConfig(classes=("ring", "star"), negative_fraction=0.5)
    counts = [len(render_shapes_image(np.random.default_rng([5, i]), config)[1]) for i in range(30)]
    assert 0 in counts and max(counts) > 0
    for i in range(10):
        for class_index, _ in render_shapes_image(np.random.default_rng([6, i]), config)[1]:
            assert class_index in (0, 1)


def test_config_validation():
    with pytest.raises(ValueError, match="subset"):
        ShapesConfig(classes=("hexagon",))
    with pytest.raises(ValueError, match="image_size"):
        ShapesConfig(image_size=(300, 200))
    with pytest.raises(ValueError, match="min_visible"):
        ShapesConfig(min_visible=0.0)


def test_json_is_coco(tmp_path):
    json_file = generate_shapes_split(str(tmp_path), 5, seed=1, num_workers=0)
    content = json.load(open(json_file))
    assert [c["name"] for c in content["categories"]] == list(SHAPE_CLASSES)
    assert [c["id"] for c in content["categories"]] == [1, 2, 3, 4, 5, 6]
    assert content["info"]["generator_version"] == synthetic.GENERATOR_VERSION
    assert [image["id"] for image in content["images"]] == [1, 2, 3, 4, 5]
    images = {image["id"]: image for image in content["images"]}
    for annotation in content["annotations"]:
        image = images[annotation["image_id"]]
        x, y, w, h = annotation["bbox"]
        assert w > 0 and h > 0 and x + w <= image["width"] and y + h <= image["height"]
        assert annotation["area"] == w * h
    assert len({a["id"] for a in content["annotations"]}) == len(content["annotations"])


def test_cache_is_reused_and_keyed_by_config(tmp_path, monkeypatch):
    json_file, image_root = prepare_shapes_split("unit", num_images=4, seed=3, root=str(tmp_path))
    assert json_file == os.path.join(image_root, "annotations.json") and os.path.isfile(json_file)
    assert os.path.basename(image_root).startswith(f"unit-v{synthetic.GENERATOR_VERSION}-")

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached split")

    monkeypatch.setattr(synthetic, "generate_shapes_split", fail)
    assert prepare_shapes_split("unit", num_images=4, seed=3, root=str(tmp_path)) == (json_file, image_root)
    monkeypatch.undo()
    noisier = ShapesConfig(noise_std=2.0)
    other, _ = prepare_shapes_split("unit", num_images=4, seed=3, config=noisier, root=str(tmp_path))
    assert other != json_file
    # Nothing temporary is left behind.
    assert sorted(f for f in os.listdir(tmp_path) if not f.endswith(".lock")) == sorted(
        [os.path.basename(image_root), os.path.basename(os.path.dirname(other))]
    )


def _prepare_in_child(root, queue):
    queue.put(prepare_shapes_split("race", num_images=6, seed=4, root=root))


def test_concurrent_preparation(tmp_path):
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_prepare_in_child, args=(str(tmp_path), queue)) for _ in range(3)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    assert len(set(results)) == 1
    directories = [f for f in os.listdir(tmp_path) if not f.endswith(".lock")]
    assert directories == [os.path.basename(results[0][1])]
    assert len(os.listdir(os.path.join(results[0][1], "images"))) == 6


def test_registration_generates_on_first_use(tmp_path):
    name = f"shapes_unit_{uuid.uuid4().hex[:6]}"
    try:
        register_shapes(name, "unit", num_images=5, seed=2, root=str(tmp_path))
        assert MetadataCatalog.get(name).thing_classes == list(SHAPE_CLASSES)
        assert os.listdir(tmp_path) == []  # metadata alone generates nothing
        dicts = DatasetCatalog.get(name)
        assert len(dicts) == 5
        assert MetadataCatalog.get(name).json_file.startswith(str(tmp_path))
        assert MetadataCatalog.get(name).evaluator_type == "coco"
        for record in dicts:
            assert record["file_name"].startswith(str(tmp_path)) and os.path.isfile(record["file_name"])
            for annotation in record["annotations"]:
                assert 0 <= annotation["category_id"] < len(SHAPE_CLASSES)
    finally:
        unregister_dataset(name)


def test_builtin_shapes_use_datasets_root(tmp_path, monkeypatch):
    """The built-in sets resolve $DETECTRON2_DATASETS when first used (checked without generating
    2000 images: the generator is replaced by one that writes an empty split)."""
    calls = []

    def fake_generator(out_dir, num_images, seed, config):
        calls.append((num_images, seed))
        with open(os.path.join(out_dir, "annotations.json"), "w") as f:
            json.dump({"images": [], "annotations": [], "categories": []}, f)

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    monkeypatch.setattr(synthetic, "generate_shapes_split", fake_generator)
    json_file, image_root = prepare_shapes_split("train")
    assert calls == [synthetic.DEFAULT_SPLITS["train"]]
    assert os.path.dirname(image_root) == str(tmp_path / "shapes") and os.path.isfile(json_file)


def test_incomplete_cache_folder_is_replaced(tmp_path):
    """A cache folder without its json (e.g. copied half-way) is regenerated, not trusted."""
    json_file, image_root = prepare_shapes_split("unit", num_images=3, seed=1, root=str(tmp_path))
    os.remove(json_file)
    assert prepare_shapes_split("unit", num_images=3, seed=1, root=str(tmp_path)) == (json_file, image_root)
    assert os.path.isfile(json_file) and len(os.listdir(os.path.join(image_root, "images"))) == 3


def test_builtin_lite_sets_use_the_lite_generator(tmp_path, monkeypatch):
    """shapes_lite_train / shapes_lite_val are registered with LITE_CONFIG, their own sizes and seeds, and a
    cache folder of their own; the lite images have the lite sizes (3 rendered per split here)."""
    from semidetr.data.datasets.synthetic import LITE_CONFIG, LITE_SPLITS

    calls = []

    def fake_generator(out_dir, num_images, seed, config):
        calls.append((num_images, seed, config))
        return generate_real(out_dir, 3, seed, config)  # 3 images instead of thousands

    generate_real = synthetic.generate_shapes_split
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    monkeypatch.setattr(synthetic, "generate_shapes_split", fake_generator)
    assert MetadataCatalog.get("shapes_lite_train").thing_classes == list(LITE_CONFIG.classes)
    for name in ("shapes_lite_train", "shapes_lite_val"):
        for record in DatasetCatalog.get(name):
            assert 112 <= min(record["height"], record["width"]) and max(record["height"], record["width"]) <= 144
    assert calls == [(*LITE_SPLITS["lite_train"], LITE_CONFIG), (*LITE_SPLITS["lite_val"], LITE_CONFIG)]
    assert len([name for name in os.listdir(tmp_path / "shapes") if name.startswith("lite_")
                and not name.endswith(".lock")]) == 2
