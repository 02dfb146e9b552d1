"""Seeded fuzz of argument types and values of every public entry point (CPU, small sizes): one
argument of a valid call at a time is replaced by values drawn from a pool of wrong types, edge
values and mismatched tensors. Each call must either succeed or raise TypeError, ValueError or
NotImplementedError whose message names the argument before its first ": " (or, for attention tensors
whose mismatch can be reported against either side, one of the tensors' names); anything else (a
crash, an IndexError or AssertionError from deep inside, an allocation) fails, with the drawn
value in the message. The pool avoids sizes that are valid but large, so no call can be slow."""

from __future__ import annotations

import math
import random
import re
import zlib

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask as torch_create_block_mask

import flashflex
from flashflex import masks, score_mods

DRAWS = 24
CLEAN_ERRORS = (TypeError, ValueError, NotImplementedError)
B, HQ, L, D = 1, 2, 130, 64


def _scalars():
    return [None, True, False, 0, -1, 1, 3, 2**31 - 1, 2**31, 2**63, -2**63 - 1, 0.0, -0.5, 1.5, math.nan,
            math.inf, -math.inf, "x", "", "1", b"1", [], [1], [1.5], ["a"], (2,), {}, {"deterministic": True},
            object(), int, torch.tensor(1), torch.tensor(2.5), torch.tensor([1, 2])]


def _tensors(length=L, heads=HQ):
    base = torch.randn(B, heads, length, D)
    return [base.double(), base.to(torch.int32), base.to(torch.bool), base.to(torch.complex64), base[0],
            base[None], base[..., :32], base[..., :96], base[:, :, :0], base[:, :1], base[:, :, :17],
            torch.randn(2, heads, length, D), torch.randn(B, 3, length, D), base.transpose(2, 3),
            base[..., ::2], torch.ones(1, 1, 1, D).expand(B, heads, 2**31, D),
            torch.ones(1, 1, 1, D).expand(B, heads, 2**31 - 1, D), base.to("meta"),
            torch.nested.nested_tensor([torch.randn(heads, 9, D), torch.randn(heads, 5, D)], layout=torch.jagged)]


def _draws(seed_text: str, pool: list):
    rng = random.Random(zlib.crc32(seed_text.encode()))
    return [pool[rng.randrange(len(pool))] for _ in range(DRAWS)]


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor {tuple(value.shape)} {value.dtype} {value.layout} on {value.device}"
    return repr(value)


def _call_checked(fn, names, value):
    """fn() succeeds or raises a clean error whose subject (the message up to its first ": ")
    names one of `names`."""
    try:
        fn()
    except CLEAN_ERRORS as e:
        message = str(e)
        subject = message.split(": ")[0]
        assert any(re.search(rf"(^|\W){re.escape(n)}(\W|$)", subject) for n in names), (
            f"{type(e).__name__} for {_describe(value)} names none of {names}: {message}")
    except Exception as e:  # noqa: BLE001 - any other exception is the failure this fuzz looks for
        raise AssertionError(f"{type(e).__name__} for {_describe(value)} (expected TypeError, ValueError or "
                             f"NotImplementedError naming {names}): {e}") from e


# ---- flex_attention ----------------------------------------------------------------------------

def _flex_kwargs():
    q, k, v = (torch.randn(B, HQ, L, D) for _ in range(3))
    return dict(query=q, key=k, value=v)


def _flex_pool(arg: str):
    if arg in ("query", "key", "value"):
        return _tensors() + _scalars()
    if arg == "block_mask":
        causal = flashflex.create_block_mask(masks.causal(), None, None, L, L)
        torch_mask = torch_create_block_mask(lambda b, h, q, kv: kv <= q, None, None, L, L, device="cpu")
        broken = torch_create_block_mask(lambda b, h, q, kv: kv <= q, None, None, L, L, device="cpu")
        broken.kv_indices.fill_(9)
        return _scalars() + [causal, torch_mask, broken, causal.to("meta"),
                             flashflex.create_block_mask(masks.causal(), None, None, L + 1, L),
                             flashflex.create_block_mask(masks.causal(), None, 3, L, L),
                             torch.ones(L, L, dtype=torch.bool)]
    if arg == "score_mod":
        return _scalars() + [lambda s, b, h, q, kv: s, score_mods.softcap(5.0), score_mods.alibi(torch.ones(3)),
                             score_mods.alibi(torch.tensor([math.nan, 1.0])), score_mods.bias(torch.randn(1, 1, L, 7)),
                             score_mods.bias(torch.randn(1, 1, L, L).double()),
                             score_mods.bias(torch.randn(2, 2, L, L))]
    return _scalars()


FLEX_ARGS = ["query", "key", "value", "score_mod", "block_mask", "scale", "enable_gqa", "return_lse",
             "kernel_options"]


@pytest.mark.filterwarnings("ignore:kernel_options")
@pytest.mark.parametrize("arg", FLEX_ARGS)
def test_flex_attention_argument(arg):
    tensors = ("query", "key", "value", "key/value")
    names = tensors if arg in tensors else (arg,)
    for value in _draws(f"flex {arg}", _flex_pool(arg)):
        kwargs = _flex_kwargs()
        kwargs[arg] = value
        _call_checked(lambda: flashflex.flex_attention(**kwargs), names, value)


# ---- create_block_mask -------------------------------------------------------------------------

def _mask_mod_pool():
    return _scalars() + [masks.causal(), masks.sliding_window(8), lambda b, h, q, kv: kv <= q, lambda b, h: True,
                         lambda b, h, q, kv, extra: True, print, masks.prefix_lm([5, 9])]


CREATE_ARGS = {"mask_mod": _mask_mod_pool, "B": _scalars, "H": _scalars, "Q_LEN": _scalars, "KV_LEN": _scalars,
               "device": lambda: _scalars() + ["cpu", "cuda", "cuda:7", "meta", "gpu", torch.device("cpu")]}


@pytest.mark.parametrize("arg", sorted(CREATE_ARGS))
@pytest.mark.parametrize("mask", ["builtin", "mask_mod"])
def test_create_block_mask_argument(arg, mask):
    for value in _draws(f"create {arg} {mask}", CREATE_ARGS[arg]()):
        kwargs = dict(mask_mod=masks.causal() if mask == "builtin" else (lambda b, h, q, kv: kv <= q), B=None,
                      H=None, Q_LEN=L, KV_LEN=L, device="cpu")
        kwargs[arg] = value
        # A mask whose data describe N samples is checked against B, whichever of the two was drawn.
        names = {"mask_mod": ("mask_mod", "B")}.get(arg, (arg, "build_block_mask"))
        _call_checked(lambda: flashflex.create_block_mask(**kwargs), names, value)


# ---- masks and score mods ----------------------------------------------------------------------

def _int_list_pool():
    return _scalars() + [[1, 2], [0], [-3], [2**63], [1.5], torch.tensor([3, 4]), torch.tensor([[1]]),
                         torch.tensor([1.0]), torch.tensor([True])]


FACTORIES = {
    "causal": (masks.causal, {"offset": 0}),
    "sliding_window": (masks.sliding_window, {"left": 4, "right": 0, "offset": 0}),
    "prefix_lm": (masks.prefix_lm, {"prefix_lengths": [3]}),
    "padding": (masks.padding, {"q_lengths": [3], "kv_lengths": [4]}),
    "eagle3": (masks.eagle3, {"step": 1, "block_len": 16, "lengths": [10]}),
    "document": (masks.document, {"doc_ids": torch.tensor([0, 0, 1]), "kv_doc_ids": None}),
    "softcap": (score_mods.softcap, {"cap": 5.0}),
    "alibi": (score_mods.alibi, {"slopes": torch.ones(2)}),
    "bias": (score_mods.bias, {"tensor": torch.zeros(1, 1, 3, 3)}),
}
FACTORY_ARGS = [(fn, arg) for fn, (_, defaults) in FACTORIES.items() for arg in defaults]


@pytest.mark.parametrize("fn,arg", FACTORY_ARGS, ids=[f"{fn}-{arg}" for fn, arg in FACTORY_ARGS])
def test_mask_and_score_mod_argument(fn, arg):
    factory, defaults = FACTORIES[fn]
    pool = _int_list_pool() if arg.endswith(("lengths", "ids")) else _scalars() + _tensors(3, 1)[:6]
    for value in _draws(f"{fn} {arg}", pool):
        kwargs = dict(defaults)
        kwargs[arg] = value
        _call_checked(lambda: factory(**kwargs), (fn, arg), value)


# ---- ttt_attention -----------------------------------------------------------------------------

def _ttt_kwargs():
    q = torch.randn(B, HQ, 17, D)
    return dict(q=q, k_blocks=[torch.randn(B, HQ, 17, D) for _ in range(2)],
                v_blocks=[torch.randn(B, HQ, 17, D) for _ in range(2)])


TTT_ARGS = ["q", "k_blocks", "v_blocks", "seq_lengths", "scale", "return_lse"]


@pytest.mark.parametrize("arg", TTT_ARGS)
def test_ttt_attention_argument(arg):
    tensors = _tensors(17)
    pools = {"q": tensors + _scalars(), "k_blocks": [[t, t] for t in tensors] + [[], tensors[:1]] + _scalars(),
             "v_blocks": [[t] for t in tensors] + _scalars(), "seq_lengths": _int_list_pool() + [[17], [18]]}
    names = ("q", "k_blocks", "v_blocks") if arg in ("q", "k_blocks", "v_blocks") else (arg,)
    for value in _draws(f"ttt {arg}", pools.get(arg, _scalars())):
        kwargs = _ttt_kwargs()
        kwargs[arg] = value
        _call_checked(lambda: flashflex.eagle3.ttt_attention(**kwargs), names, value)
