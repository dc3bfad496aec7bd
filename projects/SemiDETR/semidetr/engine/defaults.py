"""Config set-up shared by the command-line tools (train_net.py, infer.py, benchmark.py)."""
import logging
import os
import sys

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_semidetr_config
from ..data.datasets.catalog import register_datasets_from_config
from .checkpoint import read_model_info
from .config_checks import check_config

__all__ = ["setup_cfg", "setup_cfg_from_checkpoint", "shutdown_distributed"]

logger = logging.getLogger(__name__)


def setup_cfg(args, *, for_training: bool = True):
    """Build the frozen config from `--config-file` and `KEY VALUE` overrides.

    MODEL.DEVICE falls back to "cpu" (with a warning) where CUDA is not available, so the paper configs
    run unchanged on a CPU machine."""
    cfg = get_cfg()
    add_semidetr_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    _device_fallback(cfg)
    check_config(cfg, world_size=comm.get_world_size())
    register_datasets_from_config(cfg)
    cfg.freeze()
    if for_training:
        # detectron2's default_setup writes OUTPUT_DIR/config.yaml; --eval-only must not replace the config
        # of the run it evaluates (an evaluation with another config would otherwise erase it).
        run_config = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
        kept = None
        if getattr(args, "eval_only", False) and os.path.isfile(run_config):
            with open(run_config) as f:
                kept = f.read()
        default_setup(cfg, args)
        if kept is not None and comm.is_main_process():
            with open(run_config, "w") as f:
                f.write(kept)
        # detectron2 sets up its own loggers; this project's modules log under "semidetr".
        setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="semidetr", abbrev_name="semidetr")
    return cfg


def setup_cfg_from_checkpoint(path: str, opts=()):
    """The frozen config of the run that wrote checkpoint `path` (saved in it by the trainer), for
    inference without a config file, with `KEY VALUE` overrides `opts`. Returns (cfg, model info).

    The model is rebuilt without the run's data, whose files need not exist where the checkpoint is
    used: the class count comes from the checkpoint (MODEL.DETR.NUM_CLASSES) and the config names no
    data set.

    Raises:
        ValueError: the checkpoint saved no config (an older checkpoint): pass the run's config file.
    """
    info = read_model_info(path)
    if info is None:
        raise ValueError(
            f"{path} holds no config (written before checkpoints saved their run's config, or not a checkpoint "
            f"of this project): pass --config-file with the run's config "
            f"({os.path.join(os.path.dirname(path) or '.', 'config.yaml')}) and the DATASETS.* overrides it was "
            "trained with")
    cfg = get_cfg()
    add_semidetr_config(cfg)
    try:
        cfg.merge_from_other_cfg(CfgNode.load_cfg(info["config"]))
    except KeyError as error:
        raise ValueError(f"The config saved in {path} has a key this version does not know ({error}): pass "
                         "--config-file with a config of this version that builds the same model") from error
    cfg.MODEL.DETR.NUM_CLASSES = info["num_classes"]
    cfg.MODEL.WEIGHTS = path
    cfg.DATASETS.REGISTER = []
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TRAIN_UNLABELED = ()
    cfg.DATASETS.TEST = ()
    cfg.merge_from_list(list(opts))
    _device_fallback(cfg)
    cfg.freeze()
    return cfg, info


def _device_fallback(cfg) -> None:
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but CUDA is not available: running on the CPU", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"


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
