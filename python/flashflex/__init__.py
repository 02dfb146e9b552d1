"""flashflex: FlexAttention's programming model (mask mods, score mods, block sparsity) over
native kernels. `flashflex.flex_attention` is a drop-in for torch.nn.attention.flex_attention;
`flashflex.eagle3.ttt_attention` is the structured EAGLE3 test-time-training path."""

from . import eagle3, masks, score_mods
from ._C import supported_head_dims as _supported_head_dims
from .attention import flex_attention
from .block_mask import BlockMask, create_block_mask
from .masks import Mask

__all__ = ["flex_attention", "create_block_mask", "BlockMask", "Mask", "masks", "score_mods", "eagle3",
           "supported_head_dims"]
__version__ = "0.1.0"


def supported_head_dims() -> list:
    """Head dims with a compiled path (query, key and value share it)."""
    return list(_supported_head_dims())
