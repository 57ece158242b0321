"""Large CPU results on transparent huge pages, so that their first write does not fault per 4 KiB.

A pass's large results come on fresh pages more often than not: glibc serves blocks above its
mmap threshold (up to 32 MiB) from new mappings and trims the heap's top, and the first write to
each 4 KiB page faults into the kernel, which zeroes it (≈ 1.3 µs a page). A fresh 3072 × 3072
E[h hᵀ] faults 9,216 times (12 ms, a sixth of the product); a PCH-1 pass on the CIFAR-10 net at
double width faulted ≈ 22,500 times (≈ 30 ms, a tenth of the pass). ``madvise(…, MADV_HUGEPAGE)``
before the first write asks for 2 MiB pages instead (filling a fresh 3072² float32 matrix: 7.9 ms
against 19.3 ms, 1 thread; PyTorch's own allocator does the same under ``THP_MEM_ALLOC_ENABLE=1``).
From ``HINT_BYTES`` = 16 MiB on only: hints on the 4–16 MiB temporaries of a pass (heap ranges)
made the Fisher-MC pass slower in an A/B, not faster. Only a hint: where the kernel's THP mode is
``never``, on other systems and on other devices nothing changes; the values are never touched.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Callable

import torch
from torch import Tensor

__all__ = ["new_empty", "mm", "HINT_BYTES"]

HINT_BYTES = 16 << 20  # see the module docstring
_HUGE = 2 << 20  # a transparent huge page (x86-64 and arm64 with 4 KiB base pages)
_MADV_HUGEPAGE = 14


def _madvise() -> Callable[[int, int, int], int] | None:
    """libc's ``madvise`` on Linux, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_MADVISE = _madvise()


def new_empty(like: Tensor, *shape: int) -> Tensor:
    """``like.new_empty(shape)``; on a Linux CPU from ``HINT_BYTES`` on, its whole 2 MiB pages marked
    MADV_HUGEPAGE before anything is written (a failed hint is ignored: the tensor is the same)."""
    out = like.new_empty(shape)
    nbytes = out.numel() * out.element_size()
    if _MADVISE is None or out.device.type != "cpu" or nbytes < HINT_BYTES:
        return out
    start = out.data_ptr()
    lo, hi = -(-start // _HUGE) * _HUGE, (start + nbytes) // _HUGE * _HUGE  # the aligned interior
    if hi > lo:
        _MADVISE(lo, hi - lo, _MADV_HUGEPAGE)
    return out


def mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` of matrices into a :func:`new_empty` result (N-D or under autograd: plain ``a @ b``)."""
    if a.dim() != 2 or b.dim() != 2 or (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)):
        return a @ b
    return torch.mm(a, b, out=new_empty(a, a.shape[0], b.shape[1]))
