"""Resumable training streams (semidetr.data.stream, semidetr.data.build): batch i is a pure function of
(seed, i, rank, world size) whatever the start, the number of workers or the earlier batches; sharding,
aspect-ratio grouping (against a buffer-based reference), substitution of unreadable images, the
trainer's RNGs left alone, and the two-stream loader built from a config."""
import itertools
import random
import time

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import BoxMode
from PIL import Image

from semidetr.config import add_semidetr_config
from semidetr.data import build as data_build
from semidetr.data.datasets.catalog import register_dataset, unregister_dataset
from semidetr.data.mappers import LabeledDatasetMapper
from semidetr.data.stream import DeterministicTrainLoader, GroupedBatchSchedule, mix_seeds, orientation_buckets


# ---------------------------------------------------------------------------------------------------
# Fake data.
# ---------------------------------------------------------------------------------------------------
def _fake_dicts(num_images: int, portrait=()):
    """Dicts of `num_images` images: landscape 40x30 except the indices in `portrait` (30x40)."""
    portrait = set(portrait)
    return [{"index": i, "width": 30 if i in portrait else 40, "height": 40 if i in portrait else 30}
            for i in range(num_images)]


class RecordingMapper:
    """Returns the index, the size and one draw from each global RNG the augmentations may use; None
    for the indices in `unreadable` (as a mapper does for a bad image)."""

    def __init__(self, unreadable=()):
        self.unreadable = set(unreadable)

    def __call__(self, record):
        if record["index"] in self.unreadable:
            return None
        return {"index": record["index"], "width": record["width"], "height": record["height"],
                "numpy_draw": float(np.random.rand()), "python_draw": random.random()}


def _loader(dicts, total_batch_size=2, seed=0, num_workers=0, grouping=True, rank=0, world_size=1,
            mapper=None, **kwargs):
    return DeterministicTrainLoader(dicts, mapper or RecordingMapper(), total_batch_size=total_batch_size,
                                    seed=seed, stream_name="labeled", aspect_ratio_grouping=grouping,
                                    num_workers=num_workers, rank=rank, world_size=world_size, **kwargs)


def _take(loader, count):
    return list(itertools.islice(iter(loader), count))


def _indices(batches):
    return [[item["index"] for item in batch] for batch in batches]


MIXED = _fake_dicts(23, portrait=(1, 4, 5, 9, 13, 17, 20))


# ---------------------------------------------------------------------------------------------------
# Resume, workers.
# ---------------------------------------------------------------------------------------------------
def test_start_at_gives_the_batches_of_an_uninterrupted_stream():
    uninterrupted = _take(_loader(MIXED, seed=3), 30)
    resumed_loader = _loader(MIXED, seed=3)
    resumed_loader.start_at(17)
    assert _take(resumed_loader, 13) == uninterrupted[17:]
    assert resumed_loader.batch(5) == uninterrupted[5]
    # Per-item randomness differs between items (the seeding is per position, not per stream).
    draws = [item["numpy_draw"] for batch in uninterrupted for item in batch]
    assert len(set(draws)) == len(draws)
    # Another seed is another stream.
    assert _take(_loader(MIXED, seed=4), 30) != uninterrupted


def test_batches_do_not_depend_on_the_number_of_workers():
    main_process = _loader(MIXED, total_batch_size=3, seed=11)
    main_process.start_at(4)
    workers = _loader(MIXED, total_batch_size=3, seed=11, num_workers=2)
    workers.start_at(4)
    expected = _take(main_process, 9)
    assert _take(workers, 9) == expected
    assert _take(_loader(MIXED, total_batch_size=3, seed=11, num_workers=2), 13)[4:] == expected


def test_set_seed_switches_the_stream():
    loader = _loader(MIXED, seed=1)
    loader.set_seed(8)
    assert loader.seed == 8
    assert _take(loader, 10) == _take(_loader(MIXED, seed=8), 10)


# ---------------------------------------------------------------------------------------------------
# Sharding.
# ---------------------------------------------------------------------------------------------------
def test_sharding_uses_every_image_once_per_epoch_without_grouping():
    num_images, world_size, per_process = 24, 3, 2
    dicts = _fake_dicts(num_images)
    ranks = [_loader(dicts, total_batch_size=world_size * per_process, seed=5, grouping=False, rank=rank,
                     world_size=world_size) for rank in range(world_size)]
    batches_per_epoch = num_images // (world_size * per_process)
    epoch_orders = []
    for epoch in range(3):
        used = []
        for loader in ranks:
            loader.start_at(epoch * batches_per_epoch)
            used += [i for batch in _indices(_take(loader, batches_per_epoch)) for i in batch]
        assert sorted(used) == list(range(num_images)), epoch
        epoch_orders.append(used)
    # Every epoch is a new permutation.
    assert epoch_orders[0] != epoch_orders[1] != epoch_orders[2]
    # The ranks together form the single-process stream of global batches, interleaved.
    single = _indices(_take(_loader(dicts, total_batch_size=per_process, seed=5, grouping=False), 12))
    for loader in ranks:
        loader.start_at(0)
    sharded = [_indices(_take(loader, 4)) for loader in ranks]
    assert single == [sharded[g % world_size][g // world_size] for g in range(12)]


def test_sharding_with_grouping_uses_every_image_once_per_epoch_up_to_leftovers():
    world_size, per_process = 2, 3
    ranks = [_loader(MIXED, total_batch_size=world_size * per_process, seed=0, rank=rank, world_size=world_size)
             for rank in range(world_size)]
    schedule = ranks[0]._batches.schedule
    for epochs in (1, 4):
        global_batches = schedule.batches_completed_by_end_of_epoch(epochs - 1)
        used = np.zeros(len(MIXED), dtype=np.int64)
        for rank, loader in enumerate(ranks):
            for batch in _indices(_take(loader, len(range(rank, global_batches, world_size)))):
                np.add.at(used, batch, 1)
        # Each of the two buckets holds back fewer than a batch of images for the next epoch.
        assert set(used.tolist()) <= {epochs - 1, epochs}
        assert len(MIXED) * epochs - used.sum() <= 2 * (per_process - 1)


# ---------------------------------------------------------------------------------------------------
# Aspect-ratio grouping.
# ---------------------------------------------------------------------------------------------------
def test_orientation_buckets_put_squares_and_unknown_sizes_with_landscapes():
    buckets, without_size = orientation_buckets(
        [{"width": 4, "height": 3}, {"width": 3, "height": 3}, {"width": 3, "height": 4}, {"file_name": "a.jpg"}])
    assert buckets.tolist() == [0, 0, 1, 0] and without_size == 1


def _reference_grouped_batches(bucket_ids, batch_size, seed, count):
    """Global batches of data-set indices by two buffers over the permutation stream (detectron2's
    AspectRatioGroupedDataset over the whole stream)."""
    schedule = GroupedBatchSchedule(bucket_ids, batch_size, seed)
    buffers, batches = ([], []), []
    for epoch in itertools.count():
        for index in schedule.epoch_permutation(epoch).tolist():
            buffer = buffers[bucket_ids[index]]
            buffer.append(index)
            if len(buffer) == batch_size:
                batches.append(list(buffer))
                buffer.clear()
                if len(batches) == count:
                    return batches


@pytest.mark.parametrize("portrait", [(1, 4, 5, 9, 13, 17, 20), (6,), ()])
def test_grouping_matches_buffered_reference_and_is_homogeneous(portrait):
    dicts = _fake_dicts(23, portrait)
    bucket_ids = np.array([d["height"] > d["width"] for d in dicts], dtype=np.int64)
    batch_size, seed = 4, 21
    expected = _reference_grouped_batches(bucket_ids, batch_size, seed, 120)
    schedule = GroupedBatchSchedule(bucket_ids, batch_size, seed)
    assert [schedule.global_batch(g)[1].tolist() for g in range(120)] == expected
    # Random access (a resume) agrees with sequential access.
    fresh = GroupedBatchSchedule(bucket_ids, batch_size, seed)
    assert [fresh.global_batch(g)[1].tolist() for g in (97, 3, 119, 40)] == [expected[g] for g in (97, 3, 119, 40)]
    # Mapped batches are homogeneous in orientation.
    for batch in _take(_loader(dicts, total_batch_size=batch_size, seed=seed), 40):
        assert len({item["height"] > item["width"] for item in batch}) == 1


def test_grouping_replay_is_index_arithmetic_and_fast():
    num_images, batch_size = 1_000_000, 4
    bucket_ids = (np.random.default_rng(0).random(num_images) < 0.3).astype(np.int64)
    schedule = GroupedBatchSchedule(bucket_ids, batch_size, seed=1)
    start = time.perf_counter()
    positions, indices = schedule.global_batch(3 * num_images // batch_size + 12345)  # in the 4th epoch
    assert time.perf_counter() - start < 1.0
    assert len(set(bucket_ids[indices].tolist())) == 1
    # Positions address the permutations: index = permutation of epoch p // N at offset p % N.
    for position, index in zip(positions.tolist(), indices.tolist()):
        assert schedule.epoch_permutation(position // num_images)[position % num_images] == index


# ---------------------------------------------------------------------------------------------------
# Unreadable images, RNG isolation.
# ---------------------------------------------------------------------------------------------------
def test_unreadable_images_are_replaced_deterministically_within_their_bucket():
    unreadable = {1, 2, 3, 4}  # a portrait (1, 4) and landscape (2, 3) share of bad images
    mapper = RecordingMapper(unreadable)
    batches = _take(_loader(MIXED, seed=2, mapper=mapper), 40)
    used = [i for batch in _indices(batches) for i in batch]
    assert not unreadable & set(used)
    for batch in batches:
        assert len({item["height"] > item["width"] for item in batch}) == 1
    assert _take(_loader(MIXED, seed=2, mapper=mapper, num_workers=2), 40) == batches
    resumed = _loader(MIXED, seed=2, mapper=mapper)
    resumed.start_at(25)
    assert _take(resumed, 15) == batches[25:]


def test_all_images_unreadable_raises_a_clear_error():
    loader = _loader(MIXED, mapper=RecordingMapper(range(len(MIXED))), max_consecutive_failures=10)
    with pytest.raises(RuntimeError, match="10 images in a row could not be mapped.*all images unreadable"):
        loader.batch(0)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_trainers_random_states_are_left_alone(num_workers):
    np.random.seed(123)
    random.seed(456)
    torch.manual_seed(789)
    numpy_state, python_state, torch_state = np.random.get_state(), random.getstate(), torch.get_rng_state()
    batches = _take(_loader(MIXED, seed=2, num_workers=num_workers, mapper=RecordingMapper({2})), 12)
    assert len(batches) == 12
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1]) and after[2:] == numpy_state[2:]
    assert random.getstate() == python_state
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_seed_hash_is_stable():
    # Stored seeds must mean the same stream in any later session and process.
    # First output of the reference SplitMix64 generator from state 0, then a pinned tuple hash.
    assert mix_seeds(0) == 0xE220A8397B1DCDAF
    assert mix_seeds(13, 2, 5, 0) == 0x95DF31E6496FC89B
    assert len({mix_seeds(7, 2, position, 0) for position in range(10_000)}) == 10_000


# ---------------------------------------------------------------------------------------------------
# Real mappers and the config builders.
# ---------------------------------------------------------------------------------------------------
IMAGE_SIZES = [(48, 32), (32, 48), (40, 30), (30, 40), (44, 28)]  # (width, height)


@pytest.fixture
def tiny_dataset(tmp_path):
    """A registered labeled data set of small PNGs (landscape and portrait) plus one corrupt file."""
    rng = np.random.default_rng(0)
    dicts = []
    for image_id, (width, height) in enumerate(IMAGE_SIZES):
        path = tmp_path / f"image_{image_id}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        box = [2.0, 3.0, width / 2, height / 2]
        dicts.append({"file_name": str(path), "image_id": image_id, "width": width, "height": height,
                      "annotations": [{"bbox": box, "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0,
                                       "iscrowd": 0}]})
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png")
    dicts.append({**dicts[0], "file_name": str(corrupt), "image_id": len(dicts)})
    name = f"stream_test_{tmp_path.name}"
    register_dataset(name, lambda: [dict(d) for d in dicts], signature=("stream_test", str(tmp_path)),
                     metadata={"thing_classes": ["thing"]})
    yield name
    unregister_dataset(name)


def _cfg(dataset_name, **solver):
    cfg = get_cfg()
    add_semidetr_config(cfg)
    cfg.DATASETS.TRAIN = (dataset_name,)
    cfg.DATASETS.TRAIN_UNLABELED = (dataset_name,)
    cfg.INPUT.MIN_SIZE_TRAIN = (24, 40)
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "range"
    cfg.INPUT.MAX_SIZE_TRAIN = 64
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SEED = 13
    for key, value in solver.items():
        cfg.SOLVER[key] = value
    return cfg


_COMPARED_KEYS = ("image", "image_id", "height", "width", "transform_matrix", "transforms")


def _comparable(view):
    """The values of a mapped view that must match (not "mapper_stats": process ids differ)."""
    values = [view[key] for key in _COMPARED_KEYS]
    if "instances" in view:
        values += [view["instances"].gt_boxes.tensor, view["instances"].gt_classes]
    return values


def _assert_same_batches(first, second):
    """Equal batches of mapped labeled dicts or of {"weak", "strong"} pairs."""
    assert len(first) == len(second)
    for batch_a, batch_b in zip(first, second):
        assert len(batch_a) == len(batch_b)
        for item_a, item_b in zip(batch_a, batch_b):
            views = ("weak", "strong") if "weak" in item_a else (None,)
            for view in views:
                values_a = _comparable(item_a[view] if view else item_a)
                values_b = _comparable(item_b[view] if view else item_b)
                for value_a, value_b in zip(values_a, values_b):
                    if isinstance(value_a, torch.Tensor):
                        assert torch.equal(value_a, value_b)
                    else:
                        assert value_a == value_b


def test_labeled_loader_with_the_real_mapper_resumes_exactly(tiny_dataset):
    cfg = _cfg(tiny_dataset, IMS_PER_BATCH=2)
    loader = data_build.build_labeled_train_loader(cfg)
    assert loader.seed == 13 and loader.batch_size == 2
    assert isinstance(loader._batches.mapper, LabeledDatasetMapper)
    uninterrupted = _take(loader, 8)
    resumed = data_build.build_labeled_train_loader(cfg, seed=13)
    resumed.start_at(5)
    _assert_same_batches(_take(resumed, 3), uninterrupted[5:])
    cfg.DATALOADER.NUM_WORKERS = 2
    _assert_same_batches(_take(data_build.build_labeled_train_loader(cfg), 8), uninterrupted)
    corrupt_id = len(IMAGE_SIZES)
    for batch in uninterrupted:
        assert corrupt_id not in {item["image_id"] for item in batch}
        # Grouped by the original orientation (the views keep it: resize and flip only).
        assert len({item["height"] > item["width"] for item in batch}) == 1
        assert len({item["image"].shape[1] > item["image"].shape[2] for item in batch}) == 1


def test_data_seed_resolution_and_unsupported_sampler(tiny_dataset, monkeypatch):
    cfg = _cfg(tiny_dataset)
    assert data_build.resolve_data_seed(cfg) == 13
    assert data_build.resolve_data_seed(cfg, seed=99) == 99
    cfg.SEED = -1
    monkeypatch.setattr(data_build.comm, "shared_random_seed", lambda: 4242)
    assert data_build.resolve_data_seed(cfg) == 4242
    cfg.DATALOADER.SAMPLER_TRAIN = "RepeatFactorTrainingSampler"
    with pytest.raises(ValueError, match="SAMPLER_TRAIN"):
        data_build.build_labeled_train_loader(cfg)


def test_two_stream_loader_pairs_batches_and_forwards_resume(tiny_dataset):
    cfg = _cfg(tiny_dataset, IMS_PER_BATCH=3)
    cfg.SEMI.ENABLED = True
    cfg.SEMI.SAMPLE_RATIO = (1, 2)
    loader = data_build.build_semi_train_loader(cfg)
    assert isinstance(loader, data_build.TwoStreamLoader)
    assert loader.seed == 13
    # Two streams from one seed, with different derived seeds.
    assert loader.labeled_loader.stream_seed != loader.unlabeled_loader.stream_seed
    pairs = _take(loader, 5)
    for labeled, unlabeled in pairs:
        assert len(labeled) == 1 and len(unlabeled) == 2
        assert all("instances" in item for item in labeled)
        assert all(set(pair) >= {"weak", "strong", "mapper_stats"} for pair in unlabeled)
        assert all("instances" not in pair["weak"] for pair in unlabeled)
    resumed = data_build.build_semi_train_loader(cfg, seed=13)
    resumed.start_at(3)
    resumed_pairs = _take(resumed, 2)
    _assert_same_batches([p[0] for p in resumed_pairs], [p[0] for p in pairs[3:]])
    _assert_same_batches([p[1] for p in resumed_pairs], [p[1] for p in pairs[3:]])
    # set_seed reaches both streams.
    resumed.set_seed(14)
    assert resumed.labeled_loader.seed == resumed.unlabeled_loader.seed == 14
