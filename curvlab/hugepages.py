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

Temporaries that never leave a function (a pass's H̄ W, Wᵀ∇ξ, σ', the scaled g, the panels' second
factor, a diagonal tile's transpose) skip the fresh pages altogether: :func:`scratch` hands out one
kept buffer per slot and thread, reused by the next pass. glibc hands large freed blocks back to the
system between passes (its dynamic mmap and trim thresholds), so that a double-width PCH-1 pass on
the CIFAR-10 net faulted 8,000–10,600 times (with both thresholds fixed by ``mallopt``: none, and
the pass 9–13 % faster); with the kept buffers 1,000–3,100, all of them in the pass's results.
"""

from __future__ import annotations

import ctypes
import math
import sys
import threading
from typing import Callable

import torch
from torch import Tensor

__all__ = ["new_empty", "mm", "scratch", "release_scratch", "HINT_BYTES"]

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


def mm(a: Tensor, b: Tensor, slot: str | None = None) -> Tensor:
    """``a @ b`` of matrices into a :func:`new_empty` result, or with ``slot`` into that :func:`scratch`
    buffer (a temporary of the caller's); N-D or under autograd: plain ``a @ b``."""
    if a.dim() != 2 or b.dim() != 2 or (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)):
        return a @ b
    shape = a.shape[0], b.shape[1]
    return torch.mm(a, b, out=new_empty(a, *shape) if slot is None else scratch(slot, a, *shape))


_SCRATCH = threading.local()  # .buffers: {(slot, dtype): 1-D CPU tensor}, this thread's kept work buffers


def scratch(slot: str, like: Tensor, *shape: int) -> Tensor:
    """A work buffer of ``shape`` (contents undefined) in place of ``like.new_empty(shape)``, kept for
    the next call, so that its pages are faulted in once and not on every pass.

    One buffer per (``slot``, dtype) and thread, grown to the largest request, so a slot's buffer
    is valid only until its next request: use it for temporaries that never leave the caller (and
    never two live ones in one slot; not under autograd). Off the CPU (caching allocators there): a
    plain new tensor.
    """
    if like.device.type != "cpu":
        return like.new_empty(shape)
    buffers: dict[tuple[str, torch.dtype], Tensor] = _SCRATCH.__dict__.setdefault("buffers", {})
    need = math.prod(shape)
    buf = buffers.get((slot, like.dtype))
    if buf is None or buf.numel() < need:
        buf = buffers[(slot, like.dtype)] = new_empty(like, need)
    return buf[:need].view(shape)


def release_scratch() -> None:
    """Free this thread's :func:`scratch` buffers (e.g. after the last pass on a large net)."""
    _SCRATCH.__dict__.pop("buffers", None)
