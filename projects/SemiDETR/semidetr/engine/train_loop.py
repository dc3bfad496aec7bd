"""Training steps: `DetrTrainer` (supervised) and the shared step machinery the SemiTrainer builds on.

Differences from detectron2's `SimpleTrainer.run_step`:
  * full-model gradient-norm clipping (DETR/DINO: max norm 0.1) between backward and step;
  * a step whose loss or gradient is not finite is skipped: the optimizer (and, in semi-supervised
    training, the EMA teacher, which reads `last_step_skipped`) is untouched; the non-finite loss parts
    are logged; after `max_nonfinite_steps` skipped steps in a row training stops with an error.
    The decision is all-reduced, so every process skips the same steps.
  * mixed precision (SOLVER.AMP): the forward passes of a step run under autocast (`autocast_step`);
    backward, clipping and the optimizer step run with autocast off. float16 uses a gradient scaler:
    gradients are unscaled before clipping and the finiteness check, and a step whose scaled gradients
    overflow is skipped like any non-finite step (the scale is then lowered), but counts towards
    `max_nonfinite_steps` only once the loss scale has fallen below 1 (an overflow at a large scale is the
    scaler's normal search for its scale, not a diverging run).
"""
import functools
import logging
import time
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch import Tensor
from torch.profiler import record_function

from ..data.mappers import MapperStatsAggregator

__all__ = ["DetrTrainer", "NonFiniteLossError", "amp_dtype_from_config", "autocast_step"]

logger = logging.getLogger(__name__)

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def amp_dtype_from_config(cfg) -> Optional[torch.dtype]:
    """The autocast dtype of SOLVER.AMP (None when mixed precision is off); checks the device supports it."""
    if not cfg.SOLVER.AMP.ENABLED:
        return None
    name = cfg.SOLVER.AMP.DTYPE
    if name not in AMP_DTYPES:
        raise ValueError(f"SOLVER.AMP.DTYPE={name!r}: use one of {list(AMP_DTYPES)}")
    device_type = torch.device(cfg.MODEL.DEVICE).type
    if name == "bfloat16" and device_type == "cuda" and torch.cuda.is_available() \
            and not torch.cuda.is_bf16_supported():
        raise ValueError(f"SOLVER.AMP.DTYPE='bfloat16' but this GPU ({torch.cuda.get_device_name()}) has no bfloat16 "
                         "support: use SOLVER.AMP.DTYPE 'float16' (with loss scaling)")
    return AMP_DTYPES[name]


def autocast_step(run_step):
    """Decorator of a trainer's `run_step`: its forward passes run under the trainer's autocast (a no-op
    without mixed precision); `apply_update` turns autocast off again for backward and the step."""

    @functools.wraps(run_step)
    def wrapped(self):
        with torch.autocast(self.device_type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            return run_step(self)

    return wrapped


class NonFiniteLossError(FloatingPointError):
    """Raised after too many consecutive steps with a non-finite loss or gradient."""


class DetrTrainer(SimpleTrainer):
    def __init__(self, model, data_loader, optimizer, *, clip_grad_norm: float = 0.0,
                 clip_norm_type: float = 2.0, max_nonfinite_steps: int = 5,
                 amp_dtype: Optional[torch.dtype] = None):
        """
        Args:
            clip_grad_norm: max norm of all gradients together; 0 disables clipping (the norm is still
                computed, to detect non-finite gradients).
            max_nonfinite_steps: consecutive skipped steps after which training stops.
            amp_dtype: autocast dtype of the forward passes (torch.bfloat16, or torch.float16 with a
                gradient scaler), None for full precision (SOLVER.AMP, `amp_dtype_from_config`).
        """
        super().__init__(model, data_loader, optimizer)
        self.device_type = next(model.parameters()).device.type
        self.amp_dtype = amp_dtype
        # float16 needs loss scaling (its range ends at 65504); bfloat16 has float32's range.
        self.grad_scaler = torch.amp.GradScaler(self.device_type) if amp_dtype == torch.float16 else None
        self.overflow_total = 0
        self.clip_grad_norm = clip_grad_norm
        self.clip_norm_type = clip_norm_type
        self.max_nonfinite_steps = max_nonfinite_steps
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.last_step_skipped = False
        self.mapper_stats = MapperStatsAggregator()

    @autocast_step
    def run_step(self):
        assert self.model.training, "[DetrTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        with record_function("step/data"):
            data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        self.mapper_stats.update(data)
        with record_function("step/forward"):
            loss_dict = self.model(data)
        self.apply_update(loss_dict, data_time, extra_metrics=self.data_metrics())

    DATA_METRICS_PERIOD = 20

    def data_metrics(self) -> Dict[str, float]:
        """Images skipped / boxes dropped by the data mappers so far, summed over processes. Every
        DATA_METRICS_PERIOD iterations (the same iterations on every process, as it is a collective)."""
        if (self.iter + 1) % self.DATA_METRICS_PERIOD:
            return {}
        totals = self.mapper_stats.totals()
        counts = torch.tensor(list(totals.values()), dtype=torch.float64)
        if comm.get_world_size() > 1:
            counts = torch.tensor(comm.all_gather(counts.tolist()), dtype=torch.float64).sum(0)
        return {f"data/{name}": value for name, value in zip(totals, counts.tolist())}

    # ------------------------------------------------------------------------------------------------
    def apply_update(self, loss_dict: Dict[str, Tensor], data_time: float,
                     extra_metrics: Optional[Dict[str, float]] = None) -> bool:
        """Backward, clip, and step if everything is finite. Returns whether the step was applied.
        Runs with autocast off (backward follows the forward's dtypes by itself)."""
        with torch.autocast(self.device_type, enabled=False):
            return self._apply_update(loss_dict, data_time, extra_metrics)

    def _apply_update(self, loss_dict, data_time, extra_metrics):
        losses = sum(loss.float() for loss in loss_dict.values())
        scaler = self.grad_scaler
        self.optimizer.zero_grad(set_to_none=True)
        with record_function("step/backward"):
            (scaler.scale(losses) if scaler is not None else losses).backward()
        self.after_backward()
        with record_function("step/clip_and_check"):
            if scaler is not None:
                scaler.unscale_(self.optimizer)  # clip and check the true gradients
            grad_norm = self._clip_and_measure_gradients()
            loss_finite, grad_finite = self._all_processes_finite(losses, grad_norm)
        finite = loss_finite and grad_finite
        self.last_step_skipped = not finite
        if finite:
            self.nonfinite_in_a_row = 0
            self._write_metrics(loss_dict, data_time)
            if comm.is_main_process():
                scale = {"amp/loss_scale": scaler.get_scale()} if scaler is not None else {}
                self._write_extra_metrics({"grad_norm": grad_norm, **scale, **(extra_metrics or {})})
            with record_function("step/optimizer"):
                if scaler is not None:
                    scaler.step(self.optimizer)  # gradients already unscaled and checked: a plain step
                else:
                    self.optimizer.step()
        elif scaler is not None and loss_finite and scaler.get_scale() >= 1.0:
            self._handle_scaler_overflow(scaler.get_scale())
        else:
            self._handle_nonfinite_step(loss_dict, grad_norm)
        if scaler is not None:
            scaler.update()  # lowers the scale after an overflow (the inf checks of unscale_), grows it else
        return finite

    @staticmethod
    def _write_extra_metrics(metrics: Dict[str, object]) -> None:
        """Scalars (python numbers or 0-d tensors) into the event storage, with one host copy."""
        device = next((v.device for v in metrics.values() if isinstance(v, Tensor)), torch.device("cpu"))
        values = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=device).detach().reshape(())
                              for v in metrics.values()])
        get_event_storage().put_scalars(**dict(zip(metrics, values.tolist())))

    def _parameters_with_grad(self) -> List[Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]

    def _clip_and_measure_gradients(self) -> Tensor:
        params = self._parameters_with_grad()
        if not params:
            return torch.zeros(())
        if self.clip_grad_norm > 0:
            return torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm, norm_type=self.clip_norm_type)
        return torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=self.clip_norm_type)

    @staticmethod
    def _all_processes_finite(losses: Tensor, grad_norm: Tensor):
        """(loss finite, gradient finite), each on every process."""
        finite = torch.stack([torch.isfinite(losses.detach()), torch.isfinite(grad_norm.to(losses.device))])
        finite = finite.to(torch.int32)
        if comm.get_world_size() > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        loss_finite, grad_finite = finite.tolist()
        return bool(loss_finite), bool(grad_finite)

    def _handle_scaler_overflow(self, scale: float):
        """float16: the scaled gradients overflowed (the loss is finite). Skipped; the scaler halves its scale."""
        self.overflow_total += 1
        logger.info("Iteration %d: float16 gradients overflowed at loss scale %g; step skipped (optimizer and "
                    "teacher unchanged), scale lowered", self.iter, scale)
        self.optimizer.zero_grad(set_to_none=True)
        if comm.is_main_process():
            get_event_storage().put_scalar("amp/overflow_steps", self.overflow_total)

    def _handle_nonfinite_step(self, loss_dict: Dict[str, Tensor], grad_norm: Tensor):
        self.nonfinite_in_a_row += 1
        self.nonfinite_total += 1
        bad_parts = sorted(k for k, v in loss_dict.items() if not torch.isfinite(v.detach()).all())
        # The decision is all-reduced: a process whose own loss and gradient are finite skips too.
        what = "loss" if bad_parts else "gradient" if not torch.isfinite(grad_norm) else \
            "loss or gradient on another process"
        logger.warning(
            "Iteration %d: non-finite %s; step skipped (optimizer and teacher unchanged), %d in a row "
            "(limit SOLVER.MAX_NONFINITE_STEPS=%d). Non-finite loss parts on this process: %s; gradient "
            "norm: %s", self.iter, what, self.nonfinite_in_a_row,
            self.max_nonfinite_steps, bad_parts or "none", float(grad_norm))
        self.optimizer.zero_grad(set_to_none=True)
        if comm.is_main_process():
            get_event_storage().put_scalar("skipped_nonfinite_steps", self.nonfinite_total)
        if self.nonfinite_in_a_row >= self.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{self.nonfinite_in_a_row} consecutive steps had a non-finite loss or gradient (last at "
                f"iteration {self.iter}; non-finite parts: {bad_parts or 'gradient only'}). Lower "
                "SOLVER.BASE_LR, check the data (see the data warnings in the log), or enable gradient "
                "clipping (SOLVER.CLIP_GRADIENTS).")

    def state_dict(self):
        state = super().state_dict()
        state["nonfinite_total"] = self.nonfinite_total
        if self.grad_scaler is not None:
            state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self.nonfinite_total = state_dict.get("nonfinite_total", 0)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
