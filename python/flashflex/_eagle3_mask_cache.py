"""Block 0's causal BlockMask of the EAGLE3 path, built once per (device, T) and reused by every
forward and backward call of that T: the 7 steps of an unroll and their backward then build it
once instead of 14 times (a memset and two kernels each, flashflex::build_eagle3_causal_mask).

The mask is read on whichever stream a call runs: a call on another stream than the build's waits
for the build's event (and the buffer is recorded on that stream, so that an eviction cannot hand
its memory out while the stream still reads it). Under CUDA-graph capture nothing is cached: the
capture would record the build but not run it, and an evicted buffer would leave the graph reading
freed memory; the call then builds the mask into its own workspace, inside the graph."""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Tuple

import torch

from . import _C

# A few lengths in flight at once (the trainers' sequence length changes per batch); each mask is
# ~0.1-1 MB at T = 2k-16k.
_MAX_ENTRIES = 8

MaskTuple = Tuple[int, int, int, int]  # the binding's (data_ptr, bytes, seq_len, device index)


class _Entry:
    __slots__ = ("buffer", "mask", "stream", "event")

    def __init__(self, buffer: torch.Tensor, mask: MaskTuple, stream: int, event: torch.cuda.Event):
        self.buffer, self.mask, self.stream, self.event = buffer, mask, stream, event


_entries: "OrderedDict[Tuple[int, int], _Entry]" = OrderedDict()


def causal_mask(q: torch.Tensor, stream: int) -> Optional[MaskTuple]:
    """The prebuilt mask for q's T on q's CUDA device, ready on `stream` (a cudaStream_t of q's
    device); None on the CPU, while the current stream is being captured, and for q on another
    device than the current one (whose capture state torch does not tell)."""
    if not q.is_cuda or q.device.index != torch.cuda.current_device() or torch.cuda.is_current_stream_capturing():
        return None
    key = (q.device.index, q.shape[2])
    entry = _entries.get(key)
    if entry is None:
        entry = _build(q, stream)
        _entries[key] = entry
        while len(_entries) > _MAX_ENTRIES:
            _entries.popitem(last=False)
    else:
        _entries.move_to_end(key)
        if entry.stream != stream:
            current = torch.cuda.current_stream(q.device)
            current.wait_event(entry.event)
            entry.buffer.record_stream(current)
    return entry.mask


def _build(q: torch.Tensor, stream: int) -> _Entry:
    seq_len, device = q.shape[2], q.device.index
    nbytes = _C.eagle3_causal_mask_size(seq_len)
    buffer = torch.empty(nbytes, dtype=torch.uint8, device=q.device)
    _C.build_eagle3_causal_mask(seq_len, device, buffer.data_ptr(), nbytes, stream)
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(q.device))
    return _Entry(buffer, (buffer.data_ptr(), nbytes, seq_len, device), stream, event)


def clear() -> None:
    """Drops every cached mask (tests; memory is returned to torch's caching allocator)."""
    _entries.clear()
