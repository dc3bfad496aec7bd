"""Training data loaders: the labeled stream and the two-stream (labeled + unlabeled) loader.

All loaders are `DeterministicTrainLoader`s (semidetr/data/stream.py): batch i of a process depends
only on (data seed, i, rank, world size), so a resumed run sees exactly the batches of an uninterrupted
one. The data seed is cfg.SEED when >= 0, else a random seed shared by all processes; pass `seed=` (or
call `set_seed`) with the value stored in a checkpoint to resume a run whose seed was random.

Resuming (before iteration starts):

    loader.set_seed(seed_from_checkpoint)   # loader.seed is what to store
    loader.start_at(start_iter)             # first batch = the one of iteration start_iter
"""
import logging
from typing import Dict, Iterator, List, Optional, Tuple

from detectron2.data import get_detection_dataset_dicts
from detectron2.utils import comm

from .datasets.catalog import get_unlabeled_dicts, load_unlabeled_with_monitor_gt
from .datasets.validation import NoGroundTruthError
from .mappers import LabeledDatasetMapper, UnlabeledDatasetMapper
from .stream import DeterministicTrainLoader

__all__ = ["semi_batch_sizes", "resolve_data_seed", "build_labeled_train_loader", "build_unlabeled_train_loader",
           "TwoStreamLoader", "build_semi_train_loader"]

logger = logging.getLogger(__name__)

LABELED_STREAM = "labeled"
UNLABELED_STREAM = "unlabeled"


def semi_batch_sizes(cfg, world_size: int) -> Tuple[int, int]:
    """Total (over all processes) labeled and unlabeled batch sizes from SOLVER.IMS_PER_BATCH and
    SEMI.SAMPLE_RATIO, with errors that name the keys to fix."""
    ratio = tuple(cfg.SEMI.SAMPLE_RATIO)
    if len(ratio) != 2 or min(ratio) <= 0:
        raise ValueError(f"SEMI.SAMPLE_RATIO={ratio}: give two positive numbers (labeled, unlabeled), e.g. (1, 4)")
    total = cfg.SOLVER.IMS_PER_BATCH
    if total % world_size:
        raise ValueError(f"SOLVER.IMS_PER_BATCH={total} is not divisible by the {world_size} processes")
    per_process = total // world_size
    if per_process % sum(ratio):
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH={total} gives {per_process} images per process, which cannot be split "
            f"{ratio[0]}:{ratio[1]} (SEMI.SAMPLE_RATIO); use a multiple of {sum(ratio)} images per process")
    unit = per_process // sum(ratio)
    return unit * ratio[0] * world_size, unit * ratio[1] * world_size


def resolve_data_seed(cfg, seed: Optional[int] = None) -> int:
    """The data seed of a run: `seed` if given (e.g. from a checkpoint), else cfg.SEED if >= 0, else a
    random seed shared by all processes (a collective call: every process must make it)."""
    if seed is not None:
        return int(seed)
    if cfg.SEED >= 0:
        return int(cfg.SEED)
    return int(comm.shared_random_seed())


def _check_sampler(cfg) -> None:
    # The streams implement TrainingSampler's semantics only; silently ignoring e.g. repeat-factor
    # sampling would change what is trained on.
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(f"DATALOADER.SAMPLER_TRAIN={cfg.DATALOADER.SAMPLER_TRAIN!r}: the resumable training streams "
                         "sample like 'TrainingSampler' (a new permutation every epoch) only; set it to that")


def build_labeled_train_loader(cfg, total_batch_size: int = 0, seed: Optional[int] = None) -> DeterministicTrainLoader:
    """The resumable loader of labeled batches over DATASETS.TRAIN with the labeled view mapper.

    Args:
        total_batch_size: images per step over all processes; 0 = SOLVER.IMS_PER_BATCH (supervised).
        seed: the data seed (see `resolve_data_seed`).
    """
    _check_sampler(cfg)
    dataset_dicts = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    return DeterministicTrainLoader(
        dataset_dicts, LabeledDatasetMapper(cfg, is_train=True),
        total_batch_size=total_batch_size or cfg.SOLVER.IMS_PER_BATCH, seed=resolve_data_seed(cfg, seed),
        stream_name=LABELED_STREAM, aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        num_workers=cfg.DATALOADER.NUM_WORKERS)


def load_unlabeled_dicts(cfg) -> List[Dict]:
    """The dicts of DATASETS.TRAIN_UNLABELED (with "monitor_annotations" when SEMI.MONITOR_UNLABELED_GT).

    Monitoring is a diagnostic: a set without ground truth (a plain folder of images) is loaded without
    it, with one warning, and the other sets are still monitored."""
    names = list(cfg.DATASETS.TRAIN_UNLABELED)
    if not names:
        raise ValueError("SEMI.ENABLED is True but DATASETS.TRAIN_UNLABELED is empty: name the unlabeled data sets")
    if cfg.SEMI.MONITOR_UNLABELED_GT:
        logger.warning("SEMI.MONITOR_UNLABELED_GT: loading the ground truth of %s for pseudo-label precision/recall "
                       "logging only (it never reaches a loss)", names)
    dicts, unmonitored = [], []
    for name in names:
        if cfg.SEMI.MONITOR_UNLABELED_GT:
            try:
                dicts += load_unlabeled_with_monitor_gt(name)
                continue
            except NoGroundTruthError as error:
                unmonitored.append(name)
                logger.warning("SEMI.MONITOR_UNLABELED_GT: %s Its images are not monitored; pseudo-label "
                               "precision/recall are logged for batches of monitored images only.", error)
        dicts += get_unlabeled_dicts(name)
    if not dicts:
        raise ValueError(f"The unlabeled data sets {names} (DATASETS.TRAIN_UNLABELED) contain no image")
    return dicts


def build_unlabeled_train_loader(cfg, total_batch_size: int, seed: Optional[int] = None) -> DeterministicTrainLoader:
    """The resumable loader of {"weak", "strong"} view pairs of the unlabeled images (no ground truth).
    Aspect-ratio grouping uses the dicts' original sizes, which both views share."""
    _check_sampler(cfg)
    return DeterministicTrainLoader(
        load_unlabeled_dicts(cfg), UnlabeledDatasetMapper(cfg), total_batch_size=total_batch_size,
        seed=resolve_data_seed(cfg, seed), stream_name=UNLABELED_STREAM,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING, num_workers=cfg.DATALOADER.NUM_WORKERS)


class TwoStreamLoader:
    """Yields (labeled batch, unlabeled batch) per step. The two streams are independent resumable
    loaders (own derived seeds, own workers), so neither waits on the other's aspect-ratio grouping;
    `seed`, `set_seed` and `start_at` apply to both."""

    def __init__(self, labeled_loader: DeterministicTrainLoader, unlabeled_loader: DeterministicTrainLoader):
        if labeled_loader.seed != unlabeled_loader.seed:
            raise ValueError(f"The labeled and unlabeled streams were built with different data seeds "
                             f"({labeled_loader.seed} and {unlabeled_loader.seed})")
        self.labeled_loader = labeled_loader
        self.unlabeled_loader = unlabeled_loader

    @property
    def seed(self) -> int:
        """The run's data seed, from which both streams' seeds are derived (store it in checkpoints)."""
        return self.labeled_loader.seed

    def set_seed(self, seed: int) -> None:
        self.labeled_loader.set_seed(seed)
        self.unlabeled_loader.set_seed(seed)

    def start_at(self, iteration: int) -> None:
        """Iterators created afterwards start at the pair of batches of `iteration`."""
        self.labeled_loader.start_at(iteration)
        self.unlabeled_loader.start_at(iteration)

    def __iter__(self) -> Iterator[Tuple[List[Dict], List[Dict]]]:
        return zip(iter(self.labeled_loader), iter(self.unlabeled_loader))


def build_semi_train_loader(cfg, seed: Optional[int] = None) -> TwoStreamLoader:
    """The two-stream loader of semi-supervised training, batch sizes from `semi_batch_sizes`."""
    world_size = comm.get_world_size()
    labeled_total, unlabeled_total = semi_batch_sizes(cfg, world_size)
    logger.info("Semi-supervised batches: %d labeled + %d unlabeled images per step over %d process(es)",
                labeled_total, unlabeled_total, world_size)
    # Resolved once: a random seed is a collective draw, and both streams must derive from the same one.
    seed = resolve_data_seed(cfg, seed)
    return TwoStreamLoader(build_labeled_train_loader(cfg, labeled_total, seed=seed),
                           build_unlabeled_train_loader(cfg, unlabeled_total, seed=seed))
