"""Ring point-to-point of context parallelism: send a tensor to the next rank and receive one
from the previous, asynchronously (torch.distributed.batch_isend_irecv: one NCCL group on CUDA,
plain isend / irecv on gloo), so the caller computes while the transfer runs and waits after."""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.distributed as dist

__all__ = ["Ring", "wait_all"]


class Ring:
    """The ranks of `group` in a ring: rank r sends to r + 1 and receives from r - 1."""

    def __init__(self, group: Optional[dist.ProcessGroup]):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("group: torch.distributed is not initialised; call "
                               "torch.distributed.init_process_group first")
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        # P2P ops address global ranks.
        self._next = self._global((self.rank + 1) % self.world_size)
        self._prev = self._global((self.rank - 1) % self.world_size)

    def _global(self, group_rank: int) -> int:
        if self.group is None or self.group is dist.group.WORLD:
            return group_rank
        return dist.get_global_rank(self.group, group_rank)

    def origin(self, step: int) -> int:
        """Group rank whose tensor this rank holds after `step` shifts."""
        return (self.rank - step) % self.world_size

    def shift(self, send: torch.Tensor, recv: torch.Tensor, tag: int) -> List:
        """Start sending `send` to the next rank and receiving `recv` (same shape and dtype as
        what the previous rank sends) from the previous one; returns the requests to wait() on.
        Neither tensor may be touched until then. Transfers running at the same time take
        different tags (gloo matches messages by source and tag; NCCL ignores tags)."""
        assert send.is_contiguous() and recv.is_contiguous(), "ring buffers are contiguous"
        ops = [dist.P2POp(dist.isend, send, self._next, self.group, tag),
               dist.P2POp(dist.irecv, recv, self._prev, self.group, tag)]
        return dist.batch_isend_irecv(ops)


def wait_all(requests: List) -> None:
    for r in requests:
        r.wait()
