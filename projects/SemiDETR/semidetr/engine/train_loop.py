"""Training steps: `DetrTrainer` (supervised) and the shared step machinery the SemiTrainer builds on.

Differences from detectron2's `SimpleTrainer.run_step`:
  * full-model gradient-norm clipping (DETR/DINO: max norm 0.1) between backward and step;
  * a step whose loss or gradient is not finite is skipped: the optimizer (and, in semi-supervised
    training, the EMA teacher, which reads `last_step_skipped`) is untouched; the non-finite loss parts
    are logged; after `max_nonfinite_steps` skipped steps in a row training stops with an error.
    The decision is all-reduced, so every process skips the same steps.
"""
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

__all__ = ["DetrTrainer", "NonFiniteLossError"]

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Raised after too many consecutive steps with a non-finite loss or gradient."""


class DetrTrainer(SimpleTrainer):
    def __init__(self, model, data_loader, optimizer, *, clip_grad_norm: float = 0.0,
                 clip_norm_type: float = 2.0, max_nonfinite_steps: int = 5):
        """
        Args:
            clip_grad_norm: max norm of all gradients together; 0 disables clipping (the norm is still
                computed, to detect non-finite gradients).
            max_nonfinite_steps: consecutive skipped steps after which training stops.
        """
        super().__init__(model, data_loader, optimizer)
        self.clip_grad_norm = clip_grad_norm
        self.clip_norm_type = clip_norm_type
        self.max_nonfinite_steps = max_nonfinite_steps
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.last_step_skipped = False
        self.mapper_stats = MapperStatsAggregator()

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
        """Backward, clip, and step if everything is finite. Returns whether the step was applied."""
        losses = sum(loss_dict.values())
        self.optimizer.zero_grad(set_to_none=True)
        with record_function("step/backward"):
            losses.backward()
        self.after_backward()
        with record_function("step/clip_and_check"):
            grad_norm = self._clip_and_measure_gradients()
            finite = self._all_processes_finite(losses, grad_norm)
        self.last_step_skipped = not finite
        if finite:
            self.nonfinite_in_a_row = 0
            self._write_metrics(loss_dict, data_time)
            if comm.is_main_process():
                self._write_extra_metrics({"grad_norm": grad_norm, **(extra_metrics or {})})
            with record_function("step/optimizer"):
                self.optimizer.step()
        else:
            self._handle_nonfinite_step(loss_dict, grad_norm)
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
    def _all_processes_finite(losses: Tensor, grad_norm: Tensor) -> bool:
        finite = (torch.isfinite(losses.detach()) & torch.isfinite(grad_norm.to(losses.device))).to(torch.int32)
        if comm.get_world_size() > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item())

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
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self.nonfinite_total = state_dict.get("nonfinite_total", 0)
