"""Named mask cases shared by the tests: each mask written as a torch user writes a mask_mod
(plain torch ops on index tensors, usable with torch's create_block_mask and evaluable on a
broadcast grid by dense_reference.dense_mask), next to the flashflex.masks built-in meant to be
equivalent. This module never imports flashflex: a case receives the `flashflex.masks` module
and builds the built-in from it, so the torch mask_mod stays an independent statement of the
semantics in the API description.

A case is built for a batch size and a seeded generator: `build_case(name, batch, gen)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class MaskCase:
    name: str
    q_len: int
    kv_len: int
    torch_mask_mod: MaskMod
    # masks_module -> flashflex.Mask, or None for a mask that has no built-in (random tables).
    builtin: Optional[Callable] = None


# ---- torch-style mask_mods, written from the API description ------------------------------------

def causal_mod(offset: int = 0) -> MaskMod:
    def mask_mod(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + offset
    return mask_mod


def sliding_window_mod(left: int, right: int = 0, offset: int = 0) -> MaskMod:
    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx >= q_idx + offset - left) & (kv_idx <= q_idx + offset + right)
    return mask_mod


def document_mod(q_doc_ids: torch.Tensor, kv_doc_ids: torch.Tensor) -> MaskMod:
    def mask_mod(b, h, q_idx, kv_idx):
        return q_doc_ids[b, q_idx] == kv_doc_ids[b, kv_idx]
    return mask_mod


def prefix_lm_mod(prefix_lengths: torch.Tensor) -> MaskMod:
    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx < prefix_lengths[b]) | (kv_idx <= q_idx)
    return mask_mod


def padding_mod(q_lengths: Optional[torch.Tensor], kv_lengths: Optional[torch.Tensor]) -> MaskMod:
    def mask_mod(b, h, q_idx, kv_idx):
        keep = kv_idx >= 0
        if q_lengths is not None:
            keep = keep & (q_idx < q_lengths[b])
        if kv_lengths is not None:
            keep = keep & (kv_idx < kv_lengths[b])
        return keep
    return mask_mod


def eagle3_mod(step: int, block_len: int, lengths: torch.Tensor) -> MaskMod:
    """Keys: step + 1 blocks of block_len columns. Row q of sample b sees column c iff
    q < lengths[b] - step and (c in block 0 with c <= q, or c == j * block_len + q, 1 <= j <= step)."""
    def mask_mod(b, h, q_idx, kv_idx):
        block = kv_idx // block_len
        causal_part = (block == 0) & (kv_idx <= q_idx)
        diagonal = (block >= 1) & (block <= step) & (kv_idx - block * block_len == q_idx)
        return (q_idx < lengths[b] - step) & (causal_part | diagonal)
    return mask_mod


def and_mod(*mods: MaskMod) -> MaskMod:
    def mask_mod(b, h, q_idx, kv_idx):
        keep = mods[0](b, h, q_idx, kv_idx)
        for m in mods[1:]:
            keep = keep & m(b, h, q_idx, kv_idx)
        return keep
    return mask_mod


def or_mod(*mods: MaskMod) -> MaskMod:
    def mask_mod(b, h, q_idx, kv_idx):
        keep = mods[0](b, h, q_idx, kv_idx)
        for m in mods[1:]:
            keep = keep | m(b, h, q_idx, kv_idx)
        return keep
    return mask_mod


def table_mod(table: torch.Tensor) -> MaskMod:
    """A captured boolean table [B, H, Q_LEN, KV_LEN] (B or H may be 1)."""
    def mask_mod(b, h, q_idx, kv_idx):
        return table[b % table.shape[0], h % table.shape[1], q_idx, kv_idx]
    return mask_mod


# ---- random data -------------------------------------------------------------------------------

def random_doc_ids(gen: torch.Generator, batch: int, length: int, max_docs: int) -> torch.Tensor:
    """Packed documents: sorted ids with random boundaries, [batch, length] int64."""
    rows = []
    for _ in range(batch):
        n_docs = int(torch.randint(1, max_docs + 1, (1,), generator=gen))
        cuts = torch.randperm(length - 1, generator=gen)[: n_docs - 1] + 1
        starts = torch.zeros(length, dtype=torch.int64)
        starts[cuts] = 1
        rows.append(torch.cumsum(starts, 0))
    return torch.stack(rows)


def random_table(gen: torch.Generator, shape, density: float) -> torch.Tensor:
    return torch.rand(shape, generator=gen) < density


def random_tiled_table(gen: torch.Generator, shape, tile: int = 128) -> torch.Tensor:
    """A table whose 128 x 128 tiles are at random empty, full or random partial, so that
    every tile class (and partial tiles next to the ragged edge) shows up."""
    b, h, lq, lkv = shape
    nq, nkv = -(-lq // tile), -(-lkv // tile)
    kind = torch.randint(0, 3, (b, h, nq, nkv), generator=gen)  # 0 empty, 1 full, 2 partial
    kind = kind.repeat_interleave(tile, 2).repeat_interleave(tile, 3)[:, :, :lq, :lkv]
    noise = torch.rand(shape, generator=gen) < 0.4
    return (kind == 1) | ((kind == 2) & noise)


def randint(gen: torch.Generator, low: int, high: int) -> int:
    """An int in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=gen))


# ---- the named cases ---------------------------------------------------------------------------

def _case_causal(batch, gen):
    return MaskCase("causal", 300, 300, causal_mod(), lambda m: m.causal())


def _case_causal_bottom_right(batch, gen):
    q_len, kv_len = 130, 300
    off = kv_len - q_len
    return MaskCase("causal_bottom_right", q_len, kv_len, causal_mod(off), lambda m: m.causal(offset=off))


def _case_causal_negative_offset(batch, gen):
    # Rows 0..19 see nothing: fully masked rows inside a partial tile.
    return MaskCase("causal_negative_offset", 257, 257, causal_mod(-20), lambda m: m.causal(offset=-20))


def _case_sliding_window(batch, gen):
    return MaskCase("sliding_window", 300, 300, sliding_window_mod(50), lambda m: m.sliding_window(50))


def _case_sliding_window_two_sided(batch, gen):
    return MaskCase("sliding_window_two_sided", 257, 300, sliding_window_mod(33, 70, 10),
                    lambda m: m.sliding_window(33, right=70, offset=10))


def _case_document(batch, gen):
    ids = random_doc_ids(gen, batch, 300, max_docs=5)
    return MaskCase("document", 300, 300, document_mod(ids, ids), lambda m: m.document(ids))


def _case_document_cross(batch, gen):
    # Q_LEN != KV_LEN, unsorted ids: visibility is id equality, not contiguity.
    q_ids = torch.randint(0, 3, (batch, 130), generator=gen)
    kv_ids = torch.randint(0, 3, (batch, 257), generator=gen)
    return MaskCase("document_cross", 130, 257, document_mod(q_ids, kv_ids),
                    lambda m: m.document(q_ids, kv_ids))


def _case_prefix_lm(batch, gen):
    lengths = torch.tensor([randint(gen, 1, 299) for _ in range(batch)])
    return MaskCase("prefix_lm", 300, 300, prefix_lm_mod(lengths), lambda m: m.prefix_lm(lengths))


def _case_padding(batch, gen):
    q_lengths = torch.tensor([randint(gen, 1, 257) for _ in range(batch)])
    kv_lengths = torch.tensor([randint(gen, 1, 300) for _ in range(batch)])
    return MaskCase("padding", 257, 300, padding_mod(q_lengths, kv_lengths),
                    lambda m: m.padding(q_lengths, kv_lengths))


def _case_padding_kv_only(batch, gen):
    kv_lengths = torch.tensor([randint(gen, 1, 300) for _ in range(batch)])
    return MaskCase("padding_kv_only", 300, 300, padding_mod(None, kv_lengths),
                    lambda m: m.padding(kv_lengths=kv_lengths))


def _case_eagle3(batch, gen):
    step, block_len = 2, 130
    lengths = torch.tensor([randint(gen, step + 1, block_len) for _ in range(batch)])
    return MaskCase("eagle3", block_len, (step + 1) * block_len, eagle3_mod(step, block_len, lengths),
                    lambda m: m.eagle3(step, block_len, lengths))


def _case_eagle3_no_lengths(batch, gen):
    # lengths=None: every sample is block_len long.
    step, block_len = 1, 100
    lengths = torch.full((batch,), block_len)
    return MaskCase("eagle3_no_lengths", block_len, (step + 1) * block_len, eagle3_mod(step, block_len, lengths),
                    lambda m: m.eagle3(step, block_len))


def _case_and_masks(batch, gen):
    kv_lengths = torch.tensor([randint(gen, 1, 300) for _ in range(batch)])
    return MaskCase("and_masks", 300, 300, and_mod(causal_mod(), padding_mod(None, kv_lengths)),
                    lambda m: m.and_masks(m.causal(), m.padding(kv_lengths=kv_lengths)))


def _case_or_masks(batch, gen):
    prefix = torch.tensor([randint(gen, 1, 200) for _ in range(batch)])
    return MaskCase("or_masks", 300, 300, or_mod(sliding_window_mod(16), prefix_lm_mod(prefix)),
                    lambda m: m.or_masks(m.sliding_window(16), m.prefix_lm(prefix)))


def _case_nested_combination(batch, gen):
    ids = random_doc_ids(gen, batch, 257, max_docs=4)
    mod = and_mod(or_mod(sliding_window_mod(40, 40), causal_mod()), document_mod(ids, ids))
    return MaskCase("nested_combination", 257, 257, mod,
                    lambda m: m.and_masks(m.or_masks(m.sliding_window(40, 40), m.causal()), m.document(ids)))


BUILTIN_CASES = {
    f.__name__[len("_case_"):]: f
    for f in (_case_causal, _case_causal_bottom_right, _case_causal_negative_offset, _case_sliding_window,
              _case_sliding_window_two_sided, _case_document, _case_document_cross, _case_prefix_lm,
              _case_padding, _case_padding_kv_only, _case_eagle3, _case_eagle3_no_lengths, _case_and_masks,
              _case_or_masks, _case_nested_combination)
}


# Random mask_mods with no built-in: drawn at test time from the generator.

def _case_random_table(batch, gen, heads):
    q_len, kv_len = randint(gen, 1, 300), randint(gen, 1, 300)
    table = random_table(gen, (batch, heads, q_len, kv_len), density=float(torch.rand(1, generator=gen)))
    return MaskCase("random_table", q_len, kv_len, table_mod(table))


def _case_random_tiled_table(batch, gen, heads):
    q_len, kv_len = randint(gen, 129, 400), randint(gen, 129, 400)
    table = random_tiled_table(gen, (batch, heads, q_len, kv_len))
    return MaskCase("random_tiled_table", q_len, kv_len, table_mod(table))


def _case_random_document(batch, gen, heads):
    length = randint(gen, 2, 400)
    ids = random_doc_ids(gen, batch, length, max_docs=6)
    return MaskCase("random_document", length, length, and_mod(causal_mod(), document_mod(ids, ids)),
                    lambda m: m.and_masks(m.causal(), m.document(ids)))


def _case_random_sliding_window(batch, gen, heads):
    q_len, kv_len = randint(gen, 1, 400), randint(gen, 1, 400)
    left, right, offset = randint(gen, 0, 200), randint(gen, 0, 200), randint(gen, -100, 100)
    return MaskCase("random_sliding_window", q_len, kv_len, sliding_window_mod(left, right, offset),
                    lambda m: m.sliding_window(left, right, offset))


RANDOM_CASES = {
    f.__name__[len("_case_"):]: f
    for f in (_case_random_table, _case_random_tiled_table, _case_random_document, _case_random_sliding_window)
}


def build_case(name: str, batch: int, gen: torch.Generator, heads: int = 1) -> MaskCase:
    if name in BUILTIN_CASES:
        return BUILTIN_CASES[name](batch, gen)
    return RANDOM_CASES[name](batch, gen, heads)
