"""flashflex.distributed: context parallelism over torch.distributed process groups (NCCL on
CUDA, gloo on CPU). The sequence is sharded across the ranks of a group (sharding.py: zig-zag
for causal load balance, or contiguous); masks are stated in global positions (shard_masks.py).
  ring_attention     K/V passed around the ring, async point-to-point overlapped with compute
  ulysses_attention  all-to-all from sequence-sharded to head-sharded, attention, and back
  ttt_attention      EAGLE3 TTT: block 0's causal part by ring or Ulysses, the row-local keys
                     of the later blocks attended where their rows live (no communication)"""

from . import shard_masks, sharding
from .ring import ring_attention
from .shard_masks import ShardMask
from .sharding import chunk_bounds, local_length, rank_ranges, shard, unshard
from .ttt import ttt_attention
from .ulysses import ulysses_attention

__all__ = ["ring_attention", "ulysses_attention", "ttt_attention", "shard_masks", "sharding", "ShardMask",
           "shard", "unshard", "rank_ranges", "local_length", "chunk_bounds"]
