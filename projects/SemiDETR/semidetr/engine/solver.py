"""Optimizer of the DETR family: AdamW (or Adam/SGD) with per-parameter learning-rate multipliers."""
import torch
from detectron2.solver.build import get_default_optimizer_params

__all__ = ["build_optimizer"]

_OPTIMIZERS = ("ADAMW", "ADAM", "SGD")


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Parameter groups from detectron2's `get_default_optimizer_params` with the learning rate scaled by
    SOLVER.BACKBONE_MULTIPLIER for the backbone and by SOLVER.SAMPLING_OFFSETS_MULTIPLIER for the
    deformable attention's sampling offsets. Gradient clipping is done by the trainer (full-model norm)."""
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name not in _OPTIMIZERS:
        raise ValueError(f"SOLVER.OPTIMIZER={cfg.SOLVER.OPTIMIZER!r} is not one of {_OPTIMIZERS}")

    def lr_factor(parameter_name: str) -> float:
        factor = 1.0
        if parameter_name.startswith("backbone."):
            factor *= cfg.SOLVER.BACKBONE_MULTIPLIER
        if ".sampling_offsets." in parameter_name:
            factor *= cfg.SOLVER.SAMPLING_OFFSETS_MULTIPLIER
        return factor

    params = get_default_optimizer_params(
        model, base_lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM, lr_factor_func=lr_factor)
    if name == "ADAMW":
        return torch.optim.AdamW(params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    if name == "ADAM":
        return torch.optim.Adam(params, lr=cfg.SOLVER.BASE_LR)
    return torch.optim.SGD(params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV)
