"""Config set-up shared by the command-line tools (train_net.py, infer.py, benchmark.py)."""
import logging
import os
import sys

import torch
from detectron2.config import get_cfg
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_semidetr_config
from .config_checks import check_config
from ..data.catalog import ensure_registered, register_from_spec

__all__ = ["setup_cfg", "register_config_datasets", "shutdown_distributed"]

logger = logging.getLogger(__name__)


def register_config_datasets(cfg) -> None:
    """Register DATASETS.REGISTER and resolve every data set the config names (split names such as
    "shapes_train.1@10" are registered on demand). Runs in every process."""
    for spec in cfg.DATASETS.REGISTER:
        register_from_spec(spec)
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TRAIN_UNLABELED) + list(cfg.DATASETS.TEST):
        ensure_registered(name)


def setup_cfg(args, *, for_training: bool = True):
    """Build the frozen config from `--config-file` and `KEY VALUE` overrides.

    MODEL.DEVICE falls back to "cpu" (with a warning) where CUDA is not available, so the paper configs
    run unchanged on a CPU machine."""
    cfg = get_cfg()
    add_semidetr_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but CUDA is not available: running on the CPU", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    check_config(cfg, world_size=comm.get_world_size())
    register_config_datasets(cfg)
    cfg.freeze()
    if for_training:
        default_setup(cfg, args)
        # detectron2 sets up its own loggers; this project's modules log under "semidetr".
        setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="semidetr", abbrev_name="semidetr")
    return cfg


def shutdown_distributed() -> None:
    """End a successful launch()ed worker: barrier, destroy the process group, flush and leave.

    Does nothing in a single process. In a worker of detectron2's launch() it does not return: the
    interpreter's finalisation there sometimes aborts the process ("terminate called without an active
    exception": torch/gloo C++ threads destroyed while joinable at exit, about 1 run in 10 on CPU)
    after all the work is done, which fails the whole job. Everything a run writes is closed by then
    (checkpoints are written atomically, the trainer's writers are closed in after_train), so the worker
    flushes its logs and streams and exits with status 0 without finalisation. Called at the end of a
    normal run only: after an exception the other ranks may never reach the barrier, and the error must
    propagate."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    comm.synchronize()
    torch.distributed.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
