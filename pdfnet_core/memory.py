"""How many images fit: batch sizes from the free memory of a device and a family's activation estimate.

The one rule behind ``--batch-size auto`` and the nodes' batches: leave the weights and a margin,
divide what is left by one image's activation memory, and stay between 1 and a cap.  On a CPU the
answer is 1: its tuned kernels run one image at a time, and the memory figures in the README assume it.
"""
from __future__ import annotations

import torch

# what a batch may use of the free memory: the rest absorbs the estimate's error and fragmentation
HEADROOM = 0.8
MAX_BATCH = 16


def free_bytes(device: torch.device | str) -> int | None:
    """Bytes new tensors on ``device`` can take now: on CUDA the driver's free memory plus what
    torch's caching allocator holds unused; None where that is not known (the CPU, other devices)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def fitting_batch(per_image_bytes: int, free: int | None, reserve_bytes: int = 0, cap: int = MAX_BATCH,
                  images: int | None = None) -> int:
    """The largest batch whose activations fit in ``HEADROOM`` of ``free`` after ``reserve_bytes``
    (weights not yet loaded), between 1 and ``cap`` (and ``images``); 1 when ``free`` is unknown."""
    if free is None or per_image_bytes <= 0:
        return 1
    fit = int((free * HEADROOM - reserve_bytes) // per_image_bytes)
    return max(1, min(cap, fit, images if images else cap))
