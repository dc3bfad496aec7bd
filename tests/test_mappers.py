# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""Dataset mappers (semidetr.data.mappers): output keys, ground truth following the pixels, the two
independent unlabeled views, monitoring ground truth, determinism, and bad images."""
import logging
import multiprocessing

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data.common import DatasetFromList, MapDataset
from detectron2.data.detection_utils import SizeMismatchError
from detectron2.structures import BoxMode
from detectron2.utils.env import seed_all_rng
from PIL import Image

from semidetr.config import add_semidetr_config
from semidetr.data.mappers import (
    MAPPER_STATS_KEY,
    LabeledDatasetMapper,
    MapperStatsAggregator,
    UnlabeledDatasetMapper,
    build_test_mapper,
    mapper_stats,
)
from semidetr.data.transforms import COLOR_OPS, ViewAugmentation

HEIGHT, WIDTH = 60, 80
WHITE_BOX = (10, 12, 30, 40)  # XYXY, class 3
RED_BOX = (50, 30, 75, 55)  # XYXY, class 7
VIEW_KEYS = {"image", "height", "width", "file_name", "image_id", "transform_matrix", "transforms"}


@pytest.fixture
def image_file(tmp_path):
    """An RGB PNG: black, a white rectangle at WHITE_BOX and a red one at RED_BOX."""
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    x1, y1, x2, y2 = WHITE_BOX
    image[y1:y2, x1:x2] = 255
    x1, y1, x2, y2 = RED_BOX
    image[y1:y2, x1:x2] = (255, 0, 0)
    path = tmp_path / "image.png"
    Image.fromarray(image).save(path)
    return str(path)


def _annotations():
    white_xywh = [
        WHITE_BOX[0],
        WHITE_BOX[1],
        WHITE_BOX[2] - WHITE_BOX[0],
        WHITE_BOX[3] - WHITE_BOX[1],
    ]
    return [
        {"bbox": white_xywh, "bbox_mode": BoxMode.XYWH_ABS, "category_id": 3, "iscrowd": 0},
        {"bbox": [0, 0, 80, 60], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 5, "iscrowd": 1},
        {"bbox": list(RED_BOX), "bbox_mode": BoxMode.XYXY_ABS, "category_id": 7, "iscrowd": 0},
    ]


def _dataset_dict(file_name, **extra):
    return {"file_name": file_name, "height": HEIGHT, "width": WIDTH, "image_id": 17, **extra}


def _config(**input_aug):
    cfg = get_cfg()
    add_semidetr_config(cfg)
    cfg.INPUT.MIN_SIZE_TRAIN = (40, 120)
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "range"
    cfg.INPUT.MAX_SIZE_TRAIN = 150
    cfg.INPUT.MIN_SIZE_TEST = 90
    cfg.INPUT.MAX_SIZE_TEST = 1000
    for key, value in input_aug.items():
        cfg.INPUT.AUG[key] = value
    return cfg


def _extent(mask: torch.Tensor) -> np.ndarray:
    """XYXY pixel-edge extent of a (H, W) bool mask."""
    rows, cols = np.nonzero(mask.numpy())
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float32)


def _white_and_red_extents(image: torch.Tensor, image_format: str):
    """Extents of the white and the red rectangle in a CHW uint8 image."""
    red_channel, green_channel = (0, 1) if image_format == "RGB" else (2, 1)
    bright = image > 127
    white = bright.all(dim=0)
    red = bright[red_channel] & ~bright[green_channel]
    return _extent(white), _extent(red)


def _assert_boxes_follow_pixels(
    instances_boxes: torch.Tensor, image: torch.Tensor, image_format: str
):
    white, red = _white_and_red_extents(image, image_format)
    np.testing.assert_allclose(instances_boxes[0].numpy(), white, atol=1.0)
    np.testing.assert_allclose(instances_boxes[1].numpy(), red, atol=1.0)


# ---------------------------------------------------------------------------------------------------
# Labeled mapper.
# ---------------------------------------------------------------------------------------------------
def test_labeled_mapper_boxes_follow_the_image(image_file):
    mapper = LabeledDatasetMapper(_config(COLOR_OPS=["identity"]), is_train=True)
    flips = set()
    for seed in range(10):
        seed_all_rng(seed)
        mapped = mapper(_dataset_dict(image_file, annotations=_annotations()))
        assert set(mapped) == VIEW_KEYS | {"instances", MAPPER_STATS_KEY}
        image = mapped["image"]
        assert image.dtype == torch.uint8 and image.shape[0] == 3 and image.is_contiguous()
        assert (mapped["height"], mapped["width"], mapped["image_id"]) == (HEIGHT, WIDTH, 17)
        assert mapped["file_name"] == image_file
        matrix = mapped["transform_matrix"]
        assert matrix.dtype == torch.float32 and matrix.shape == (3, 3)
        assert mapped["transforms"][0] == "resize" and mapped["transforms"][-1] == "identity"
        flips.add("hflip" in mapped["transforms"])
        instances = mapped["instances"]
        assert instances.image_size == tuple(image.shape[1:])
        # Crowd dropped; classes kept in order.
        assert instances.gt_classes.tolist() == [3, 7]
        assert instances.gt_boxes.tensor.dtype == torch.float32
        _assert_boxes_follow_pixels(instances.gt_boxes.tensor, image, "BGR")
    assert flips == {True, False}


def test_labeled_mapper_colour_op_and_rgb_output(image_file):
    mapper = LabeledDatasetMapper(_config(), is_train=True)
    mapper_rgb = LabeledDatasetMapper(
        True, augmentation=mapper.augmentation, image_format="RGB", min_box_size=1.0
    )
    seed_all_rng(0)
    bgr = mapper(_dataset_dict(image_file, annotations=_annotations()))
    seed_all_rng(0)
    rgb = mapper_rgb(_dataset_dict(image_file, annotations=_annotations()))
    assert bgr["transforms"][-1] in COLOR_OPS
    assert torch.equal(bgr["image"], rgb["image"].flip(0))
    assert torch.equal(bgr["transform_matrix"], rgb["transform_matrix"])


def test_labeled_mapper_without_colour(image_file):
    mapper = LabeledDatasetMapper(_config(LABELED_COLOR=False), is_train=True)
    for seed in range(5):
        seed_all_rng(seed)
        ops = mapper(_dataset_dict(image_file, annotations=_annotations()))["transforms"]
        assert ops in (["resize"], ["resize", "hflip"])


def test_labeled_mapper_drops_and_counts_degenerate_boxes(image_file):
    mapper = LabeledDatasetMapper(_config(COLOR_OPS=["identity"], MIN_BOX_SIZE=1.0), is_train=True)
    annotations = _annotations() + [
        {"bbox": [85, 10, 95, 20], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1},  # outside
        {"bbox": [10, 10, 0.2, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2},  # < 1 px wide
    ]
    before = mapper_stats()["dropped_gt_boxes"]
    mapped = mapper(_dataset_dict(image_file, annotations=annotations))
    assert mapped["instances"].gt_classes.tolist() == [3, 7]
    assert mapper_stats()["dropped_gt_boxes"] == before + 2
    assert mapped[MAPPER_STATS_KEY]["dropped_gt_boxes"] == before + 2


def test_labeled_mapper_requires_annotations(image_file):
    mapper = LabeledDatasetMapper(_config(), is_train=True)
    with pytest.raises(KeyError, match="annotations"):
        mapper(_dataset_dict(image_file))


def test_test_mapper_resizes_deterministically_and_drops_annotations(image_file):
    mapper = build_test_mapper(_config())
    mapped = mapper(_dataset_dict(image_file, annotations=_annotations()))
    assert set(mapped) == VIEW_KEYS
    assert mapped["image"].shape == (3, 90, 120) and mapped["transforms"] == ["resize"]
    torch.testing.assert_close(
        mapped["transform_matrix"], torch.diag(torch.tensor([1.5, 1.5, 1.0]))
    )


# ---------------------------------------------------------------------------------------------------
# Unlabeled mapper.
# ---------------------------------------------------------------------------------------------------
def test_unlabeled_mapper_gives_two_independent_views_without_instances(image_file):
    mapper = UnlabeledDatasetMapper(_config())
    differences = set()
    for seed in range(10):
        seed_all_rng(seed)
        # Annotations present in the input dict must not reach the output.
        mapped = mapper(_dataset_dict(image_file, annotations=_annotations()))
        assert set(mapped) == {"weak", "strong", MAPPER_STATS_KEY}
        weak, strong = mapped["weak"], mapped["strong"]
        assert set(weak) == VIEW_KEYS and set(strong) == VIEW_KEYS
        assert weak["transforms"] in (["resize"], ["resize", "hflip"])
        assert strong["transforms"][-1] == "erase" and len(strong["transforms"]) >= 4
        assert (
            (weak["height"], weak["width"])
            == (strong["height"], strong["width"])
            == (HEIGHT, WIDTH)
        )
        if weak["image"].shape != strong["image"].shape:
            differences.add("size")
        if ("hflip" in weak["transforms"]) != ("hflip" in strong["transforms"]):
            differences.add("flip")
    assert differences == {"size", "flip"}


def test_unlabeled_mapper_monitor_instances_follow_each_view(image_file):
    mapper = UnlabeledDatasetMapper(_config(COLOR_OPS=["identity"], ERASE_COUNT=(0, 0)))
    seed_all_rng(0)
    without = mapper(_dataset_dict(image_file))
    assert (
        "monitor_instances" not in without["weak"] and "monitor_instances" not in without["strong"]
    )
    for seed in range(8):
        seed_all_rng(seed)
        mapped = mapper(_dataset_dict(image_file, monitor_annotations=_annotations()))
        for name in ("weak", "strong"):
            view = mapped[name]
            assert set(view) == VIEW_KEYS | {"monitor_instances"}
            monitor = view["monitor_instances"]
            assert monitor.image_size == tuple(view["image"].shape[1:])
            kept = monitor.gt_classes.tolist()
            if name == "weak":
                assert kept == [3, 7]
            if kept == [3, 7]:  # the strong view's translation may push a box out of the image
                # Strong: the extent of the rotated/sheared rectangles is their corners' bounding box.
                _assert_boxes_follow_pixels(monitor.gt_boxes.tensor, view["image"], "BGR")


def test_unlabeled_dict_without_size_uses_the_decoded_size(image_file):
    mapped = UnlabeledDatasetMapper(_config())({"file_name": image_file, "image_id": "a"})
    assert (mapped["weak"]["height"], mapped["weak"]["width"]) == (HEIGHT, WIDTH)


@pytest.mark.parametrize("kind", ["labeled", "unlabeled"])
def test_mappers_are_deterministic_under_seeding(image_file, kind):
    if kind == "labeled":
        mapper = LabeledDatasetMapper(_config(), is_train=True)
        views = lambda mapped: [mapped]  # noqa: E731
    else:
        mapper = UnlabeledDatasetMapper(_config())
        views = lambda mapped: [mapped["weak"], mapped["strong"]]  # noqa: E731
    outputs = []
    for seed in (5, 5, 6):
        seed_all_rng(seed)
        outputs.append(
            [views(mapper(_dataset_dict(image_file, annotations=_annotations()))) for _ in range(3)]
        )

    def same(first, second):
        return all(
            torch.equal(a["image"], b["image"])
            and torch.equal(a["transform_matrix"], b["transform_matrix"])
            and a["transforms"] == b["transforms"]
            for views_a, views_b in zip(first, second)
            for a, b in zip(views_a, views_b)
        )

    assert same(outputs[0], outputs[1])
    assert not same(outputs[0], outputs[2])


# ---------------------------------------------------------------------------------------------------
# Bad images and counters.
# ---------------------------------------------------------------------------------------------------
def _mappers():
    cfg = _config()
    return [
        (LabeledDatasetMapper(cfg, is_train=True), {"annotations": _annotations()}),
        (UnlabeledDatasetMapper(cfg), {}),
    ]


def test_unreadable_image_is_skipped_with_a_warning_and_counted(tmp_path, caplog):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    for file_name in (str(corrupt), str(tmp_path / "missing.jpg")):
        for mapper, extra in _mappers():
            before = mapper_stats()["skipped_unreadable"]
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="semidetr.data.mappers"):
                assert mapper(_dataset_dict(file_name, **extra)) is None
            warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
            assert len(warnings) == 1 and file_name in warnings[0].getMessage()
            assert mapper_stats()["skipped_unreadable"] == before + 1
    with pytest.raises(Exception):
        build_test_mapper(_config())(_dataset_dict(str(corrupt)))


def test_size_mismatch_is_skipped_with_a_warning_and_counted(image_file, caplog):
    for mapper, extra in _mappers():
        before = mapper_stats()["skipped_size_mismatch"]
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="semidetr.data.mappers"):
            assert mapper({**_dataset_dict(image_file, **extra), "height": HEIGHT + 1}) is None
        assert len(caplog.records) == 1 and image_file in caplog.records[0].getMessage()
        assert mapper_stats()["skipped_size_mismatch"] == before + 1
    with pytest.raises(SizeMismatchError):
        build_test_mapper(_config())({**_dataset_dict(image_file), "width": WIDTH - 1})


def test_map_dataset_replaces_a_skipped_image(tmp_path, image_file):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png")
    dataset = DatasetFromList([_dataset_dict(str(corrupt)), _dataset_dict(image_file)], copy=False)
    mapped = MapDataset(dataset, UnlabeledDatasetMapper(_config()))[0]
    assert mapped["weak"]["file_name"] == image_file


def test_stats_aggregator_sums_the_latest_count_of_each_process():
    aggregator = MapperStatsAggregator()

    def stats(process, unreadable, mismatch, dropped):
        return {
            MAPPER_STATS_KEY: {
                "process": process,
                "skipped_unreadable": unreadable,
                "skipped_size_mismatch": mismatch,
                "dropped_gt_boxes": dropped,
            }
        }

    aggregator.update([stats("a", 1, 0, 4), stats("b", 2, 1, 0)])
    aggregator.update([stats("a", 3, 0, 5)])
    aggregator.update([stats("a", 1, 0, 4)])  # an older snapshot of "a" arrives late
    assert aggregator.totals() == {
        "skipped_unreadable": 5,
        "skipped_size_mismatch": 1,
        "dropped_gt_boxes": 5,
    }


def _report_stats(queue):
    queue.put(mapper_stats())


def test_forked_worker_starts_its_own_counters(tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png")
    UnlabeledDatasetMapper(_config())(_dataset_dict(str(corrupt)))
    parent = mapper_stats()
    assert parent["skipped_unreadable"] >= 1
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    worker = context.Process(target=_report_stats, args=(queue,))
    worker.start()
    child = queue.get(timeout=30)
    worker.join(timeout=30)
    assert child["process"] != parent["process"]
    assert child["skipped_unreadable"] == 0


def test_mappers_can_be_built_without_a_config(image_file):
    augmentation = ViewAugmentation(short_edge_length=(30,), max_size=100)
    mapper = UnlabeledDatasetMapper(
        weak_augmentation=augmentation,
        strong_augmentation=augmentation,
        image_format="RGB",
        min_box_size=0.0,
    )
    mapped = mapper(_dataset_dict(image_file))
    assert mapped["weak"]["image"].shape == (3, 30, 40)
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        LabeledDatasetMapper(
            True, augmentation=augmentation, image_format="YUV-BT.601", min_box_size=0.0
        )
