"""The benchmark vocabulary every script in bench/ uses: case names, the problem each one names,
and its mask in each form a peer takes (flashflex mask, torch mask_mod, SDPA is_causal, FA4
arguments), with its visible pairs. One definition, so that every implementation of a case
attends over the same keys and the TFLOP/s of every script count the same pairs.

Case names: <mask>_<length>[_h<Hq>x<Hkv>][_d<D>][_<dtype>][_b<B>]
  mask      causal | dense | sliding_window_<W> (kv in [q - W, q]) | eagle3_ttt (the 7-step TTT
            unroll of bench/eagle3_common.py), each followed by _<length>;
            document_<N>x<L>: N causal documents of L tokens, length N * L (no _<length>)
  length    <n>k (n * 1024 tokens) or a token count
  defaults  32 query / 8 key-value heads, D = 128, bf16, B = 1; eagle3_ttt with B > 1: sample 0
            has the full length, the others 0.6 T (odd, a ragged tail)
e.g. causal_16k, dense_8k_d256, sliding_window_2048_16k, document_8x2048, causal_8k_h40x8,
eagle3_ttt_16k_b2, causal_256_h4x2_d64_fp32 (a CPU-sized problem).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_MASK = r"(?P<mask>causal|dense|sliding_window_(?P<window>\d+)|eagle3_ttt)_(?P<length>\d+k?)"
_DOC = r"document_(?P<docs>\d+)x(?P<doc_len>\d+)"
_NAME = re.compile(rf"^(?:{_MASK}|{_DOC})(?P<suffix>(?:_[a-z0-9]+)*)$")
_SUFFIX = re.compile(r"^(?:h(?P<hq>\d+)x(?P<hkv>\d+)|d(?P<d>\d+)|b(?P<b>\d+)|(?P<dtype>bf16|fp16|fp32))$")


@dataclass(frozen=True)
class MaskSpec:
    """One mask over a [seq_len, seq_len] score matrix (eagle3: [T, (step + 1) T])."""
    kind: str          # "causal", "dense", "sliding_window", "document", "eagle3"
    window: int = 0    # sliding_window: kv in [q - window, q]
    doc_len: int = 0   # document: consecutive documents of doc_len tokens
    causal: bool = True  # document: causal inside each document (else every key of the document)
    step: int = 0      # eagle3: the TTT step

    def flashflex(self, seq_len: int, doc_ids: Optional[torch.Tensor] = None):
        """The flashflex.masks mask (None: dense). doc_ids overrides the documents' ids (e.g.
        per-sample ids [B, T])."""
        import flashflex
        m = flashflex.masks
        if self.kind == "dense":
            return None
        if self.kind == "causal":
            return m.causal()
        if self.kind == "sliding_window":
            return m.sliding_window(self.window)
        if self.kind == "document":
            ids = doc_ids if doc_ids is not None else torch.arange(seq_len) // self.doc_len
            return m.and_masks(m.causal(), m.document(ids)) if self.causal else m.document(ids)
        if self.kind == "eagle3":
            return m.eagle3(self.step, seq_len)
        raise ValueError(f"MaskSpec.kind: unknown {self.kind!r}")

    def mask_mod(self) -> Optional[Callable]:
        """torch flex's mask_mod (None: dense), integer arithmetic only, so that every torch
        flex backend (Triton, FLASH) can compile it."""
        w, d = self.window, self.doc_len
        if self.kind == "dense":
            return None
        if self.kind == "causal":
            return lambda b, h, q, kv: kv <= q
        if self.kind == "sliding_window":
            return lambda b, h, q, kv: (kv <= q) & (kv >= q - w)
        if self.kind == "document" and self.causal:
            return lambda b, h, q, kv: (kv <= q) & (kv // d == q // d)
        if self.kind == "document":
            return lambda b, h, q, kv: kv // d == q // d
        raise ValueError(f"MaskSpec.mask_mod: no torch mask_mod for {self.kind!r} (eagle3: eagle3_customer_mask_mod)")

    def sdpa_is_causal(self) -> Optional[bool]:
        """SDPA's is_causal for this mask; None where SDPA's flags cannot express it."""
        return {"causal": True, "dense": False}.get(self.kind)

    def fa4_kwargs(self) -> Optional[dict]:
        """flash_attn.cute.flash_attn_func arguments (document: see fa4_doc_len); None if none fits."""
        if self.kind in ("causal", "dense"):
            return {"causal": self.kind == "causal"}
        if self.kind == "sliding_window":
            return {"causal": True, "window_size": (self.window, 0)}
        return None

    def pairs(self, seq_len: int) -> int:
        """Visible (q, kv) pairs of one head."""
        t = seq_len
        if self.kind == "causal":
            return t * (t + 1) // 2
        if self.kind == "dense":
            return t * t
        if self.kind == "sliding_window":  # q < W sees q + 1 keys, the others W + 1
            n = min(t, self.window)
            return n * (n + 1) // 2 + (t - n) * (self.window + 1)
        if self.kind == "document":
            full, tail = divmod(t, self.doc_len)
            if not self.causal:
                return full * self.doc_len ** 2 + tail ** 2
            return full * self.doc_len * (self.doc_len + 1) // 2 + tail * (tail + 1) // 2
        if self.kind == "eagle3":  # step k: q sees q + 1 causal keys and k diagonal ones
            return t * (t + 1) // 2 + self.step * t
        raise ValueError(f"MaskSpec.pairs: unknown kind {self.kind!r}")

    def label(self) -> str:
        docs = f"({self.doc_len} tokens{'' if self.causal else ', not causal'})"
        extra = {"sliding_window": f"({self.window})", "document": docs,
                 "eagle3": f"(step {self.step})"}.get(self.kind, "")
        return self.kind + extra


def eagle3_customer_mask_mod(lengths: torch.Tensor, seq_len: int, kv_len: int):
    """The EAGLE3 mask as its trainers write it (generate_eagle3_mask of
    tests/python/eagle3_reference.py, the project's reference copy), over [K_0 | ... | K_k];
    lengths: per sample, already reduced by the step."""
    import os
    import sys
    tests = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests", "python")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from eagle3_reference import generate_eagle3_mask
    return generate_eagle3_mask(lengths, seq_len, kv_len)


@dataclass(frozen=True)
class Case:
    name: str
    seq_len: int
    mask: MaskSpec
    batch: int = 1
    q_heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    dtype: torch.dtype = torch.bfloat16

    @property
    def unroll_case(self) -> bool:
        return self.mask.kind == "eagle3"

    def lengths(self) -> Optional[tuple]:
        """EAGLE3 unroll: per-sample lengths (None: all seq_len)."""
        import eagle3_common as ec
        return None if self.batch == 1 else (self.seq_len,) + (ec.odd_length(self.seq_len),) * (self.batch - 1)

    def unroll(self):
        """The EAGLE3 TTT unroll problem of an eagle3_ttt case (bench/eagle3_common.Unroll)."""
        import eagle3_common as ec
        if not self.unroll_case:
            raise ValueError(f"{self.name}: not an eagle3_ttt case")
        return ec.Unroll(self.name, self.seq_len, self.batch, self.q_heads, self.kv_heads, self.head_dim,
                         lengths=self.lengths(), dtype=self.dtype)

    def visible_pairs(self) -> int:
        """Visible pairs summed over the batch, of one head (eagle3: the whole unroll)."""
        if self.unroll_case:
            return self.unroll().visible_pairs()
        return self.batch * self.mask.pairs(self.seq_len)

    def fwd_flops(self) -> float:
        """4 * Hq * D * visible pairs (two GEMMs), as FlashAttention counts them."""
        return 4.0 * self.q_heads * self.head_dim * self.visible_pairs()

    def bwd_flops(self) -> float:  # five GEMMs against the forward's two
        return 2.5 * self.fwd_flops()

    def describe(self) -> str:
        return (f"T={self.seq_len}, B={self.batch}, heads {self.q_heads}/{self.kv_heads}, D={self.head_dim}, "
                f"{str(self.dtype).replace('torch.', '')}, {self.mask.label()}")

    def shrunk(self, seq_len: int = 256, q_heads: int = 4, kv_heads: int = 2) -> "Case":
        """The same case at a CPU size (fp32; window and documents scaled with the length)."""
        f = seq_len / self.seq_len
        mask = replace(self.mask, window=max(1, int(self.mask.window * f)) if self.mask.window else 0,
                       doc_len=max(1, int(self.mask.doc_len * f)) if self.mask.doc_len else 0)
        return replace(self, name=f"{self.name} (at T={seq_len})", seq_len=seq_len, mask=mask,
                       q_heads=q_heads, kv_heads=kv_heads, dtype=torch.float32)


def _tokens(text: str) -> int:
    return int(text[:-1]) * 1024 if text.endswith("k") else int(text)


def parse(name: str) -> Case:
    """The Case a name denotes (grammar at the top of this file); ValueError naming what is wrong."""
    match = _NAME.match(name)
    if not match:
        raise ValueError(f"case {name!r}: expected <mask>_<length>[_h<Hq>x<Hkv>][_d<D>][_<dtype>][_b<B>] with "
                         f"mask causal, dense, sliding_window_<W>, eagle3_ttt, or document_<N>x<L>[...]")
    g = match.groupdict()
    if g["docs"]:
        seq_len, mask = int(g["docs"]) * int(g["doc_len"]), MaskSpec("document", doc_len=int(g["doc_len"]))
    else:
        seq_len = _tokens(g["length"])
        kind = "sliding_window" if g["window"] else g["mask"]
        mask = MaskSpec({"eagle3_ttt": "eagle3"}.get(kind, kind), window=int(g["window"] or 0))
    fields: Dict[str, object] = {}
    for token in filter(None, g["suffix"].split("_")):
        s = _SUFFIX.match(token)
        if not s:
            raise ValueError(f"case {name!r}: unknown suffix {token!r} (expected h<Hq>x<Hkv>, d<D>, b<B>, "
                             f"{', '.join(DTYPES)})")
        if s["hq"]:
            fields.update(q_heads=int(s["hq"]), kv_heads=int(s["hkv"]))
        elif s["d"]:
            fields["head_dim"] = int(s["d"])
        elif s["b"]:
            fields["batch"] = int(s["b"])
        else:
            fields["dtype"] = DTYPES[s["dtype"]]
    case = Case(name, seq_len, mask, **fields)
    if case.q_heads % case.kv_heads:
        raise ValueError(f"case {name!r}: query heads {case.q_heads} not a multiple of key/value heads {case.kv_heads}")
    return case


def parse_list(text: str) -> List[Case]:
    """Cases of a comma-separated list, each name once, in order."""
    return [parse(n) for n in dict.fromkeys(n.strip() for n in text.split(",") if n.strip())]


# The attention cases of the Hopper issues (bench/run.py, bench/run_backward.py), in the order of
# what those issues target first (causal 16k, the sparse masks, head dims 64 / 256), so that a
# time budget cuts the tail.
ATTENTION_CASES = ",".join(
    ["causal_16k", "document_8x2048", "sliding_window_2048_16k", "causal_16k_d64", "causal_16k_d256",
     "causal_8k", "causal_8k_d64", "causal_8k_d256", "causal_8k_h40x8"]
    + [f"dense_{t}{'' if d == 128 else f'_d{d}'}" for d in (128, 64, 256) for t in ("8k", "16k")])
# The EAGLE3 unroll cases of bench/eagle3_unroll.py (GPU) and its CPU demonstration.
UNROLL_CASES = "eagle3_ttt_2k,eagle3_ttt_8k,eagle3_ttt_16k,eagle3_ttt_2k_b2,eagle3_ttt_8k_b2,eagle3_ttt_16k_b2," \
               "eagle3_ttt_8k_h40x8"
UNROLL_CPU_CASES = "eagle3_ttt_128_h4x2_d64_fp32,eagle3_ttt_256_h4x2_d64_fp32_b2,eagle3_ttt_128_h10x2_d64_fp32"
