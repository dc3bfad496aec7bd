# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""Training data streams that resume exactly.

detectron2's training loader cannot be resumed exactly: its TrainingSampler restarts the permutation,
AspectRatioGroupedDataset holds items in buffers, and the augmentations draw from per-worker global
RNGs whose state depends on how many samples each worker mapped. Here the batch number i of a process
is a pure function of (seed, i, rank, world size), so resuming at iteration k is starting at batch k.

The stream, in three layers:

1. Positions. An infinite sequence of epochs, each a random permutation of the data set drawn by a
   `torch.Generator` seeded from (stream seed, epoch); stream position p is item p % N of epoch p // N
   (N images), as detectron2's TrainingSampler.

2. Global batches (`GroupedBatchSchedule`). Positions are dealt, in order, into two buckets by the
   orientation of their image (bucket 0: width >= height, bucket 1: portrait; taken from the dataset
   dicts' "width"/"height" before mapping); a bucket that holds `batch_size` positions is emitted as the
   next global batch, as detectron2's AspectRatioGroupedDataset but over the whole stream. Without
   aspect-ratio grouping there is one bucket, and global batch g is positions [g b, (g + 1) b). Every
   epoch holds the same number of images of each orientation, so the global batch number g is located
   in closed form (the epoch where it completes, then one vectorised pass over that epoch): replay
   needs index arithmetic only, no image decoding, about 0.1 s for 1M images. A dict without "width"
   and "height" goes to bucket 0 (its size is not read from the file here: that would decode headers
   of the whole data set at start-up; the built-in loaders all record sizes).

   Sharding: every process computes the same global batch sequence and process r of W takes global
   batches r, r + W, r + 2W, ...: its batch i is global batch i W + r. Each image is thus used once
   per epoch over all processes, up to the < batch_size positions per bucket that wait for the next
   epoch to fill their batch.

3. Mapping (`MappedBatchDataset`). Before the mapper sees the item at position p, numpy's and Python's
   global RNGs are seeded from a hash of (stream seed, p), so a mapped item does not depend on which
   process or worker maps it, nor on what was mapped before. In the main process (num_workers=0) both
   RNG states are saved before a batch and restored after it, so the trainer's own use of them is
   unaffected. torch's global RNG is never touched in the main process (the model's denoising noise
   and dropout use it, and the trainer checkpoints it): mappers must draw their randomness from
   `np.random` or `random` (SemiDETR's views do). A mapper that returns None (an unreadable image)
   gets a substitute from the same orientation bucket, chosen and seeded from (stream seed, p,
   attempt); after `max_consecutive_failures` failures in a row at one position the stream raises.

With DATALOADER.NUM_WORKERS > 0 a torch DataLoader maps whole batches in workers: batch numbers are
handed to the workers round-robin and returned in order, so the output equals the num_workers=0
output batch for batch.
"""
import itertools
import logging
import math
import random
import zlib
from collections import OrderedDict
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetFromList
from detectron2.utils import comm

__all__ = [
    "NUM_ORIENTATION_BUCKETS",
    "mix_seeds",
    "derive_stream_seed",
    "orientation_buckets",
    "GroupedBatchSchedule",
    "MappedBatchDataset",
    "DeterministicTrainLoader",
]

logger = logging.getLogger(__name__)

# Bucket 0: width >= height (and images without a recorded size); bucket 1: height > width.
NUM_ORIENTATION_BUCKETS = 2

# Domain tags of the hashes, so the epoch permutations, the per-item RNG seeds, the substitute picks
# and the DataLoader's generator of one stream never share a hash input.
_EPOCH_TAG = 1
_ITEM_TAG = 2
_SUBSTITUTE_TAG = 3
_WORKER_GENERATOR_TAG = 4

_MASK64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    """The SplitMix64 finaliser: a bijection of 64-bit integers with good avalanche."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def mix_seeds(*values: int) -> int:
    """A 64-bit hash of a tuple of integers, the same in every process and Python session (unlike
    `hash`). For a fixed prefix it is a bijection of the last value, so distinct stream positions never
    share a seed."""
    mixed = 0
    for value in values:
        mixed = _splitmix64(mixed ^ (int(value) & _MASK64))
    return mixed


def derive_stream_seed(seed: int, stream_name: str) -> int:
    """The seed of one stream ("labeled", "unlabeled") from the run's data seed."""
    return mix_seeds(seed, zlib.crc32(stream_name.encode("utf-8")))


def orientation_buckets(dataset_dicts: Sequence[dict]) -> Tuple[np.ndarray, int]:
    """Bucket of every dict (0: width >= height, 1: portrait) and the number of dicts without a size
    (put into bucket 0)."""
    buckets = np.zeros(len(dataset_dicts), dtype=np.int64)
    without_size = 0
    for index, record in enumerate(dataset_dicts):
        width, height = record.get("width"), record.get("height")
        if width is None or height is None:
            without_size += 1
        elif height > width:
            buckets[index] = 1
    return buckets, without_size


class GroupedBatchSchedule:
    """The global batch sequence of a stream as index arithmetic (see the module docstring).

    `global_batch(g)` returns the stream positions and the data-set indices of global batch g. Calls
    for nearby g are served from a cache of the last epochs' permutations, so sequential use costs one
    permutation per epoch; any g is reachable in one epoch's work.
    """

    def __init__(self, bucket_ids: np.ndarray, batch_size: int, seed: int):
        """
        Args:
            bucket_ids: (N,) bucket (0 or 1) of every data-set index; all zeros to batch without
                aspect-ratio grouping.
            batch_size: images per global batch (= per process batch).
            seed: the stream seed; epoch e is `torch.randperm(N)` drawn from seed (seed, epoch).
        """
        bucket_ids = np.asarray(bucket_ids, dtype=np.int64)
        if bucket_ids.ndim != 1 or len(bucket_ids) == 0:
            raise ValueError("GroupedBatchSchedule needs a non-empty data set")
        if bucket_ids.min() < 0 or bucket_ids.max() >= NUM_ORIENTATION_BUCKETS:
            raise ValueError(f"bucket ids must be in [0, {NUM_ORIENTATION_BUCKETS})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.num_items = len(bucket_ids)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.bucket_ids = bucket_ids
        self.bucket_sizes = np.bincount(bucket_ids, minlength=NUM_ORIENTATION_BUCKETS).tolist()
        # Data-set indices of each bucket: the candidates of a substitute for an unreadable image.
        self.bucket_members = [np.flatnonzero(bucket_ids == bucket) for bucket in range(NUM_ORIENTATION_BUCKETS)]
        # A batch of a bucket with n images spans up to ceil((batch_size - 1) / n) earlier epochs; keep
        # those and the current one so sequential batches never redraw a permutation.
        smallest_bucket = min(size for size in self.bucket_sizes if size > 0)
        self._epoch_cache_size = 2 + math.ceil(self.batch_size / smallest_bucket)
        self._epoch_cache: "OrderedDict[int, List[Tuple[np.ndarray, np.ndarray]]]" = OrderedDict()
        self._table_epoch = -1
        self._table_first_batch = 0
        self._table_positions = np.empty((0, self.batch_size), dtype=np.int64)
        self._table_indices = np.empty((0, self.batch_size), dtype=np.int64)

    # -- epochs ---------------------------------------------------------------------------------------
    def epoch_permutation(self, epoch: int) -> np.ndarray:
        """The data-set indices of epoch `epoch` in stream order."""
        generator = torch.Generator()
        generator.manual_seed(mix_seeds(self.seed, _EPOCH_TAG, epoch))
        return torch.randperm(self.num_items, generator=generator).numpy()

    def _epoch_buckets(self, epoch: int) -> List[Tuple[np.ndarray, np.ndarray]]:
        """Per bucket: (stream positions, data-set indices) of its images in epoch `epoch`, in order."""
        cached = self._epoch_cache.get(epoch)
        if cached is not None:
            self._epoch_cache.move_to_end(epoch)
            return cached
        permutation = self.epoch_permutation(epoch)
        bucket_of_offset = self.bucket_ids[permutation]
        per_bucket = []
        for bucket in range(NUM_ORIENTATION_BUCKETS):
            offsets = np.flatnonzero(bucket_of_offset == bucket)
            per_bucket.append((offsets + epoch * self.num_items, permutation[offsets]))
        self._epoch_cache[epoch] = per_bucket
        if len(self._epoch_cache) > self._epoch_cache_size:
            self._epoch_cache.popitem(last=False)
        return per_bucket

    def _bucket_items(self, bucket: int, first_rank: int, end_rank: int) -> Tuple[np.ndarray, np.ndarray]:
        """(positions, indices) of the images of `bucket` with rank (order of arrival in the bucket over
        the whole stream) in [first_rank, end_rank)."""
        size = self.bucket_sizes[bucket]
        first_epoch, last_epoch = first_rank // size, (end_rank - 1) // size
        parts = [self._epoch_buckets(epoch)[bucket] for epoch in range(first_epoch, last_epoch + 1)]
        start = first_rank - first_epoch * size
        stop = end_rank - first_epoch * size
        positions = np.concatenate([part[0] for part in parts])[start:stop]
        indices = np.concatenate([part[1] for part in parts])[start:stop]
        return positions, indices

    # -- batches --------------------------------------------------------------------------------------
    def batches_completed_by_end_of_epoch(self, epoch: int) -> int:
        """Number of global batches complete at the end of epoch `epoch` (-1: before the stream)."""
        return sum((epoch + 1) * size // self.batch_size for size in self.bucket_sizes)

    def epoch_of_batch(self, global_batch: int) -> int:
        """The epoch in which global batch `global_batch` completes (its last position lies)."""
        # Each epoch completes at least N / batch_size - 2 batches, which bounds the search.
        low, high = 0, (global_batch + 2) * self.batch_size // self.num_items + 2
        while self.batches_completed_by_end_of_epoch(high) <= global_batch:
            high *= 2
        while low < high:
            middle = (low + high) // 2
            if self.batches_completed_by_end_of_epoch(middle) > global_batch:
                high = middle
            else:
                low = middle + 1
        return low

    def _build_epoch_table(self, epoch: int) -> None:
        """All global batches that complete in `epoch`, in completion order."""
        positions, indices, completions = [], [], []
        for bucket, size in enumerate(self.bucket_sizes):
            if size == 0:
                continue
            first_batch = epoch * size // self.batch_size
            end_batch = (epoch + 1) * size // self.batch_size
            if end_batch == first_batch:
                continue
            bucket_positions, bucket_indices = self._bucket_items(
                bucket, first_batch * self.batch_size, end_batch * self.batch_size)
            bucket_positions = bucket_positions.reshape(-1, self.batch_size)
            positions.append(bucket_positions)
            indices.append(bucket_indices.reshape(-1, self.batch_size))
            completions.append(bucket_positions[:, -1])
        # A position belongs to one bucket, so completion positions are distinct: the order is total.
        order = np.argsort(np.concatenate(completions), kind="stable")
        self._table_positions = np.concatenate(positions)[order]
        self._table_indices = np.concatenate(indices)[order]
        self._table_first_batch = self.batches_completed_by_end_of_epoch(epoch - 1)
        self._table_epoch = epoch

    def global_batch(self, global_batch: int) -> Tuple[np.ndarray, np.ndarray]:
        """(stream positions, data-set indices), each of shape (batch_size,), of global batch g."""
        if global_batch < 0:
            raise ValueError(f"global batch numbers start at 0, got {global_batch}")
        row = global_batch - self._table_first_batch
        if not 0 <= row < len(self._table_positions):
            self._build_epoch_table(self.epoch_of_batch(global_batch))
            row = global_batch - self._table_first_batch
        return self._table_positions[row], self._table_indices[row]

    def substitute_index(self, index: int, position: int, attempt: int) -> int:
        """A replacement for data-set `index` (unmappable) at `position`, from its bucket, so that an
        aspect-ratio grouped batch stays homogeneous; a pure function of (seed, position, attempt)."""
        candidates = self.bucket_members[self.bucket_ids[index]]
        return int(candidates[mix_seeds(self.seed, _SUBSTITUTE_TAG, position, attempt) % len(candidates)])


def _seed_python_and_numpy(seed: int) -> None:
    # Two 32-bit words: numpy's legacy seeding takes 32-bit integers, and distinct 64-bit seeds stay
    # distinct.
    np.random.seed([seed & 0xFFFFFFFF, seed >> 32])
    random.seed(seed)


class MappedBatchDataset(torch.utils.data.Dataset):
    """Map-style dataset whose item i is the mapped batch i of one process (a list of mapped dicts).

    A pure function of (stream seed, i, rank, world size), so any process or data-loader worker can
    produce any batch.
    """

    def __init__(self, dataset: DatasetFromList, mapper, schedule: GroupedBatchSchedule, *, rank: int,
                 world_size: int, max_consecutive_failures: int = 100):
        """
        Args:
            dataset: the dataset dicts (random access).
            mapper: callable(dict) -> mapped dict, or None for an image that cannot be used; draws its
                randomness from `np.random` / `random`.
            schedule: the global batch sequence of the stream.
            rank, world_size: this process takes global batches rank, rank + world_size, ...
            max_consecutive_failures: mapping attempts at one position before giving up.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.dataset = dataset
        self.mapper = mapper
        self.schedule = schedule
        self.rank = rank
        self.world_size = world_size
        self.max_consecutive_failures = max_consecutive_failures

    def __getitem__(self, batch_number: int) -> List[dict]:
        positions, indices = self.schedule.global_batch(batch_number * self.world_size + self.rank)
        # Saved and restored around the batch so that mapping in the main process leaves the trainer's
        # numpy / Python RNGs as they were; in a worker it costs two copies of a small state.
        numpy_state, python_state = np.random.get_state(), random.getstate()
        try:
            return [self._map_item(int(position), int(index)) for position, index in zip(positions, indices)]
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)

    def _map_item(self, position: int, index: int) -> dict:
        original_index = index
        for attempt in range(self.max_consecutive_failures):
            _seed_python_and_numpy(mix_seeds(self.schedule.seed, _ITEM_TAG, position, attempt))
            mapped = self.mapper(self.dataset[index])
            if mapped is not None:
                return mapped
            # The mapper has logged why; say what replaces it once failures repeat (as detectron2's
            # MapDataset), so a data set of bad images is visible before the limit is hit.
            if attempt >= 2:
                logger.warning(f"Stream position {position}: {attempt + 1} images in a row could not be "
                               f"mapped (last: index {index}); trying another")
            index = self.schedule.substitute_index(original_index, position, attempt)
        raise RuntimeError(
            f"Stream position {position}: {self.max_consecutive_failures} images in a row could not be "
            f"mapped (first: index {original_index}, last: index {index}). Are all images unreadable? "
            "See the warnings of the mapper above.")


class _BatchNumbers(torch.utils.data.Sampler):
    """The per-process batch numbers start, start + 1, ... (the DataLoader's sampler)."""

    def __init__(self, start: int):
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start)


def _batch_as_is(batch: List[dict]) -> List[dict]:
    """collate_fn: a batch is already the list of mapped dicts."""
    return batch


class DeterministicTrainLoader:
    """An infinite, exactly resumable training loader: iterating yields per-process batches (lists of
    mapped dicts) numbered from `start_at` (default 0); batch i depends only on (seed, i, rank, world
    size), not on the number of workers nor on earlier batches.

    Resume: `set_seed(seed_from_checkpoint)` (needed when the seed was random) and `start_at(k)` before
    `iter()`; then the first batch is the one an uninterrupted run would use at iteration k.
    """

    def __init__(self, dataset_dicts: List[dict], mapper, *, total_batch_size: int, seed: int,
                 stream_name: str, aspect_ratio_grouping: bool = True, num_workers: int = 0,
                 rank: Optional[int] = None, world_size: Optional[int] = None,
                 max_consecutive_failures: int = 100):
        """
        Args:
            dataset_dicts: detectron2 dataset dicts ("width"/"height" are read for the grouping).
            mapper: callable(dict) -> mapped dict or None (see `MappedBatchDataset`).
            total_batch_size: images per step over all processes; divisible by the world size.
            seed: the run's data seed (same in every process); the stream uses a seed derived from it
                and `stream_name`, so two streams of one run differ.
            stream_name: "labeled" / "unlabeled": names the stream in logs and in the seed derivation.
            aspect_ratio_grouping: batch landscape and portrait images separately.
            num_workers: data-loader worker processes (0: map in the main process).
            rank, world_size: default to detectron2's `comm` values.
            max_consecutive_failures: see `MappedBatchDataset`.
        """
        rank = comm.get_rank() if rank is None else rank
        world_size = comm.get_world_size() if world_size is None else world_size
        if total_batch_size <= 0 or total_batch_size % world_size:
            raise ValueError(f"The total batch size of the {stream_name} stream ({total_batch_size}) must be a "
                             f"positive multiple of the number of processes ({world_size})")
        if not dataset_dicts:
            raise ValueError(f"The {stream_name} stream has no image")
        self.stream_name = stream_name
        self.batch_size = total_batch_size // world_size
        self.total_batch_size = total_batch_size
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.aspect_ratio_grouping = aspect_ratio_grouping
        self.max_consecutive_failures = max_consecutive_failures
        if aspect_ratio_grouping:
            self._bucket_ids, without_size = orientation_buckets(dataset_dicts)
            if without_size:
                logger.warning(f"[{stream_name} stream] {without_size} of {len(dataset_dicts)} images have no "
                               "recorded width/height: they are grouped with the landscape images")
        else:
            self._bucket_ids = np.zeros(len(dataset_dicts), dtype=np.int64)
        # Serialised (detectron2's default): workers read the dicts without copy-on-access growth.
        self._dataset = DatasetFromList(dataset_dicts, copy=False)
        self._mapper = mapper
        self._start = 0
        self.set_seed(seed)
        landscape, portrait = np.bincount(self._bucket_ids, minlength=NUM_ORIENTATION_BUCKETS).tolist()
        grouping = (f"aspect-ratio grouping on ({landscape} landscape or square, {portrait} portrait)"
                    if aspect_ratio_grouping else "no aspect-ratio grouping")
        logger.info(f"[{stream_name} stream] {len(dataset_dicts)} images, {grouping}; {self.batch_size} images "
                    f"per batch per process ({total_batch_size} over {world_size} process(es)), "
                    f"{num_workers} worker(s), seed {self.seed}")

    @property
    def seed(self) -> int:
        """The run's data seed this stream was derived from (store it in checkpoints)."""
        return self._seed

    @property
    def stream_seed(self) -> int:
        """The seed of this stream's permutations and per-item RNGs (derived from `seed`)."""
        return self._batches.schedule.seed

    def set_seed(self, seed: int) -> None:
        """Use the run's data seed `seed` (e.g. restored from a checkpoint) for iterators created
        afterwards."""
        seed = int(seed)
        if getattr(self, "_seed", seed) != seed:
            logger.info(f"[{self.stream_name} stream] data seed changed from {self._seed} to {seed}")
        self._seed = seed
        schedule = GroupedBatchSchedule(self._bucket_ids, self.batch_size,
                                        derive_stream_seed(seed, self.stream_name))
        self._batches = MappedBatchDataset(self._dataset, self._mapper, schedule, rank=self.rank,
                                           world_size=self.world_size,
                                           max_consecutive_failures=self.max_consecutive_failures)

    def start_at(self, iteration: int) -> None:
        """Make iterators created afterwards start at batch `iteration` (the batch an uninterrupted run
        consumes at that iteration)."""
        if iteration < 0:
            raise ValueError(f"start_at({iteration}): iterations start at 0")
        if iteration != self._start:
            logger.info(f"[{self.stream_name} stream] starting at batch {iteration}")
        self._start = int(iteration)

    def batch(self, batch_number: int) -> List[dict]:
        """Mapped batch `batch_number` of this process, computed in the calling process."""
        return self._batches[batch_number]

    def __iter__(self) -> Iterator[List[dict]]:
        if self.num_workers == 0:
            return map(self._batches.__getitem__, itertools.count(self._start))
        # The DataLoader seeds its workers' torch RNGs from `generator`; without one it would draw that
        # seed from the main process's global torch RNG, which the trainer checkpoints.
        generator = torch.Generator()
        generator.manual_seed(mix_seeds(self.stream_seed, _WORKER_GENERATOR_TAG))
        return iter(torch.utils.data.DataLoader(
            self._batches, batch_size=None, sampler=_BatchNumbers(self._start), num_workers=self.num_workers,
            collate_fn=_batch_as_is, generator=generator))
