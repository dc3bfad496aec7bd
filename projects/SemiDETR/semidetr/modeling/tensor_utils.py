"""Small tensors of python numbers, made without a host-device synchronisation."""
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["small_tensor"]


def small_tensor(data: Sequence, dtype: Optional[torch.dtype] = None, device=None) -> Tensor:
    """`torch.tensor(data, dtype=dtype, device=device)` without waiting for the device.

    `torch.tensor(data, device=cuda)` is a blocking copy: it waits until the stream has drained, i.e. it
    synchronises the host with every kernel queued so far, in the middle of a training step. A
    non-blocking copy from pageable memory returns once the driver has staged the bytes, without waiting
    (and the source may be freed right away). On the CPU it is the tensor itself.
    """
    return torch.tensor(data, dtype=dtype).to(device, non_blocking=True)
