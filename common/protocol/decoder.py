"""The two-party forward pass of a causal LM (Llama / GPT-2), with a shared KV cache.

Written once against `Backend`, like `common.protocol.program.encoder_forward`, and
built from the same operations: linear layers with the server's weights, the private
token embedding (`Backend.lookup`), share×share matmuls, LayerNorm / RMSNorm through
the one rsqrt, the reference set's odd rsqrt forms for the FFN activation and its
exp-based softmax. One call processes `n` new tokens at public positions
pos0 … pos0+n−1 against a cache of pos0 earlier keys and values:

  prefill: n = prompt length, empty cache;   step: n = 1, the cache of every earlier
  token. The cache is returned, still secret-shared: nothing is recomputed.

Data flow per layer (pre-norm):
  x = norm(h) → Q, K, V (one linear, server weights, 1/√d_head folded into Q)
  → RoPE (llama; public per-position rotations: local on shares) → K, V appended
  to the cache → scores = Q·Kᵀ with grouped-query heads (the G query heads of one
  key/value head are stacked as G·n rows: K and V are never repeated) → exp-softmax
  with the public causal mask → P·V → output linear → h += ·
  → x = norm(h) → FFN (llama: SiLU(gate)·up → down; gpt2: GeLU) → h += ·.
Output: the last position's logits (final norm, LM head as a linear layer with the
server's — tied — weights), opened to the client only.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from common.approx import functions as F
from common.approx.backend import Backend, Value
from common.mpc.ring import PublicMatrices
from common.mpc.roles import CLIENT, SERVER
from common.protocol.decoder_card import DecoderCard
from common.protocol.program import SiteSource

Weights = dict[str, NDArray[np.float64]]


@dataclass
class KvCache:
    """Per layer, keys (after RoPE) and values of every processed position, as
    shares (or plain tensors on a `PlainBackend`): (B, kv_heads, T, head_dim)."""

    keys: list[Value]
    values: list[Value]

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[2]) if self.keys else 0


class DecoderSites(SiteSource):
    """Public site constants of a decoder card; `observe_logits` is a calibration hook
    (no-op when running) that also gets the public causal mask."""

    def __init__(self, card: DecoderCard) -> None:  # type: ignore[override]
        self.sites = card.sites

    def observe_logits(self, name: str, scores: Value, keep: NDArray) -> None:
        """Calibration hook (no-op when running)."""


def causal_keep(pos0: int, n: int, group: int = 1) -> NDArray[np.float64]:
    """The public causal mask (1, 1, group·n, pos0+n): row g·n + i (query position
    pos0+i of the g-th query head sharing a key/value head) keeps keys j ≤ pos0+i."""
    q = pos0 + np.arange(n)[:, None]
    keep = (np.arange(pos0 + n)[None, :] <= q).astype(np.float64)
    return np.tile(keep, (group, 1))[None, None]


def rope_tables(
    theta: float, head_dim: int, pos0: int, n: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(cos, signed sin), each (n, head_dim), of HF's rotary embedding at positions
    pos0…pos0+n−1: rope(x) = x·cos + swap_halves(x)·sin_signed, where
    swap_halves(x) = [x₂, x₁] and sin_signed = [−sin, sin] (= HF's rotate_half)."""
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    ang = (pos0 + np.arange(n, dtype=np.float64))[:, None] * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)
    return np.concatenate([cos, cos], axis=1), np.concatenate([-sin, sin], axis=1)


def _rope(ops: Backend, x: Value, cos: NDArray, sin: NDArray) -> Value:
    """RoPE on shares (B, heads, n, dh): two public products and a local swap of the
    halves — no communication."""
    half = x.shape[-1] // 2
    swapped = ops.concat([x[..., half:], x[..., :half]], axis=-1)
    return ops.mul_public(x, cos) + ops.mul_public(swapped, sin)


def decoder_forward(
    ops: Backend,
    card: DecoderCard,
    party: int,
    shape: tuple[int, int],
    pos0: int,
    weights: Weights | None,
    token_ids: NDArray[np.int64] | None,
    cache: KvCache | None,
    sites: DecoderSites | None = None,
    scope: Callable[..., AbstractContextManager] | None = None,
    matrices: PublicMatrices | None = None,
) -> tuple[NDArray[np.float64] | None, KvCache]:
    """Process `shape` = (B, n) new tokens at positions pos0…pos0+n−1 (public).

    The server passes `weights`, the client `token_ids` (B, n) (on a plain back-end
    both). `cache` holds the pos0 earlier positions (None or empty when pos0 = 0).
    `matrices`: the server's memo of its joined (q·k·v, gate·up) and encoded weights,
    kept across calls and sessions (without it every call joins the matrices afresh).
    Returns (the client's opened logits of the last position (B, V), None on the
    server; the extended cache, shared). Cost per layer: two or three linear layers'
    inputs, two batched matmuls over the pos0+n cached positions, two norms, the
    activation and the softmax sites (docs/BENCHMARKS.md, "Generation").
    """
    a = card.arch
    sites = sites or DecoderSites(card)
    scope = scope or (lambda **kw: nullcontext())
    plain = weights is not None and token_ids is not None
    is_server = plain or party == SERVER
    is_client = plain or party == CLIENT
    B, n = shape
    d, H, KV, dh, G = a.hidden, a.heads, a.kv_heads, a.head_dim, a.group
    end = pos0 + n
    if end > a.max_context:
        raise ValueError(f"context of {end} tokens exceeds the card's {a.max_context}")
    if (cache.length if cache else 0) != pos0:
        raise ValueError(f"the cache holds {cache.length if cache else 0} positions, not {pos0}")
    llama = a.family == "llama"

    def w(name: str) -> NDArray[np.float64] | None:
        if not is_server:
            return None
        assert weights is not None
        return weights.get(name)

    def linear(x: Value, key: str, names: list[str], outs: list[int]) -> Value:
        """Linear layers of one input as one: its masked input is sent once."""
        wt = bs = None
        if is_server:
            parts = [w(m + ".w") for m in names]
            if matrices is not None:
                wt = matrices.joined(key, parts)  # type: ignore[arg-type]
            else:
                wt = np.concatenate(parts, axis=1)  # type: ignore[arg-type]
            if w(names[0] + ".b") is not None:
                bs = np.concatenate([w(m + ".b") for m in names])  # type: ignore[misc]
        with scope(op="linear"):
            return ops.linear(x, key, sum(outs), wt, bs)

    def norm(x: Value, name: str) -> Value:
        site = sites.layernorm(name, a.norm_eps)
        gamma = ops.server_constant(w(name + ".g"), (d,))
        with scope(op="norm"):
            if llama:
                return F.rmsnorm(ops, x, gamma, site)
            return F.layernorm(ops, x, gamma, ops.server_constant(w(name + ".b"), (d,)), site)

    with scope(layer="embed"), scope(op="embed"):
        onehot = None
        if is_client:
            ids = np.asarray(token_ids, dtype=np.int64)
            if ids.shape != (B, n) or ids.min() < 0 or ids.max() >= a.vocab_size:
                raise ValueError(
                    f"token ids must have shape {(B, n)} and lie in [0, {a.vocab_size})"
                )
            onehot = np.zeros((B, n, a.vocab_size))
            np.put_along_axis(onehot, ids[..., None], 1.0, axis=-1)
        h = ops.lookup(onehot, (B, n, a.vocab_size), "emb.word", d, w("emb.word"))
        if not llama:  # learned positions: public rows of a server table
            pos = w("emb.pos")
            rows = None if pos is None else np.broadcast_to(pos[pos0:end], (B, n, d)).copy()
            h = h + ops.server_constant(rows, (B, n, d))

    keep = causal_keep(pos0, n, G)
    cos, sin = rope_tables(a.rope_theta, dh, pos0, n) if llama else (None, None)
    keys, values = [], []
    for i in range(a.layers):
        p = f"L{i}"
        with scope(layer=f"layer{i}"):
            x = norm(h, f"{p}.ln1")
            qkv = linear(x, f"{p}.qkv", [f"{p}.q", f"{p}.k", f"{p}.v"], [d, KV * dh, KV * dh])
            q = ops.swap(qkv[..., :d].reshape(B, n, H, dh), 1, 2)
            k = ops.swap(qkv[..., d : d + KV * dh].reshape(B, n, KV, dh), 1, 2)
            v = ops.swap(qkv[..., d + KV * dh :].reshape(B, n, KV, dh), 1, 2)
            if llama:
                q, k = _rope(ops, q, cos, sin), _rope(ops, k, cos, sin)
            if cache is not None and pos0:
                k = ops.concat([cache.keys[i], k], axis=2)
                v = ops.concat([cache.values[i], v], axis=2)
            keys.append(k)
            values.append(v)
            qg = q.reshape(B, KV, G * n, dh)  # query heads h = kv·G + g, as G·n rows
            with scope(op="matmul"):
                scores = ops.matmul(qg, ops.swap(k, -1, -2))  # (B, KV, G·n, T)
            sites.observe_logits(f"{p}.logits", scores, keep)
            with scope(op="softmax"):
                site = sites.softmax(f"{p}.softmax")
                if isinstance(site, F.SoftmaxProbe):
                    num, inv = site.apply(ops, scores, keep), None
                else:
                    num, inv = F.exp_softmax_parts(ops, scores, keep, site)
            with scope(op="matmul"):
                ctx = ops.matmul(num, v)  # (B, KV, G·n, dh)
            if inv is not None:
                with scope(op="softmax"):
                    ctx = F.mul_broadcast(ops, ctx, inv)
            ctx = ops.swap(ctx.reshape(B, H, n, dh), 1, 2).reshape(B, n, d)
            h = h + linear(ctx, f"{p}.o", [f"{p}.o"], [d])
            x = norm(h, f"{p}.ln2")
            act_site = sites.rsqrt(f"{p}.act")
            if llama:
                gu = linear(x, f"{p}.gateup", [f"{p}.gate", f"{p}.up"], [a.ffn, a.ffn])
                with scope(op="act"):
                    act = F.gelu_reference(ops, gu[..., : a.ffn], card.approx.act_form, act_site)
                    ff = ops.mul(act, gu[..., a.ffn :])
                h = h + linear(ff, f"{p}.down", [f"{p}.down"], [d])
            else:
                ff = linear(x, f"{p}.ff1", [f"{p}.ff1"], [a.ffn])
                with scope(op="act"):
                    ff = F.gelu_reference(ops, ff, card.approx.act_form, act_site)
                h = h + linear(ff, f"{p}.ff2", [f"{p}.ff2"], [d])

    with scope(layer="head"):
        last = norm(h[:, n - 1 :, :], "final.ln")
        logits = linear(last, "lm", ["lm"], [a.vocab_size])
        with scope(op="output"):
            out = ops.output(logits.reshape(B, a.vocab_size), to=CLIENT)
    return (out if is_client else None), KvCache(keys, values)
