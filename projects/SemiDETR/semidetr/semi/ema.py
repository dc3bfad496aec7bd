"""Exponential moving average of the student's weights into the teacher (mean teacher)."""
from typing import List, Tuple

import torch
from torch import Tensor, nn

__all__ = ["ema_decay", "EmaUpdater"]


def ema_decay(momentum: float, iteration: int, warmup: bool = True) -> float:
    """min(m, 1 - 1 / (iter + 1)) with warm-up: the teacher follows the student closely early in training,
    when an average over few steps would be dominated by the random initialisation. Without warm-up, m
    from the first step: for a teacher that starts from a trained checkpoint, which the first noisy
    semi-supervised steps of the student should not overwrite."""
    return min(momentum, 1.0 - 1.0 / (iteration + 1)) if warmup else momentum


class EmaUpdater:
    """teacher <- d * teacher + (1 - d) * student for parameters and floating buffers; integer buffers
    (e.g. BatchNorm's num_batches_tracked) are copied. Tensors are paired by name once, at construction,
    and updated with fused multi-tensor ops."""

    def __init__(self, teacher: nn.Module, student: nn.Module):
        teacher_state = dict(teacher.named_parameters())
        teacher_state.update(teacher.named_buffers())
        student_state = dict(student.named_parameters())
        student_state.update(student.named_buffers())
        if teacher_state.keys() != student_state.keys():
            missing = sorted(teacher_state.keys() ^ student_state.keys())
            raise ValueError(f"Teacher and student differ in their tensors: {missing[:10]}")
        self.averaged: Tuple[List[Tensor], List[Tensor]] = ([], [])
        self.copied: Tuple[List[Tensor], List[Tensor]] = ([], [])
        for name, teacher_tensor in teacher_state.items():
            target = self.averaged if teacher_tensor.is_floating_point() else self.copied
            target[0].append(teacher_tensor)
            target[1].append(student_state[name])

    @torch.no_grad()
    def update(self, decay: float) -> None:
        teacher, student = self.averaged
        if teacher:
            torch._foreach_lerp_(teacher, [s.detach() for s in student], 1.0 - decay)
        for t, s in zip(*self.copied):
            t.copy_(s)

    @torch.no_grad()
    def copy_student(self) -> None:
        """teacher <- student exactly (training start, or after loading weights into the student)."""
        for t, s in zip(*self.averaged):
            t.copy_(s)
        for t, s in zip(*self.copied):
            t.copy_(s)
