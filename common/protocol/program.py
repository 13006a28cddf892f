"""The two-party forward pass of a BERT-family encoder, written once against `Backend`.

Both parties call `encoder_forward` with the same public card; the server passes the
weights and no tokens, the client the tokens and no weights. The same function runs
on `PlainBackend` (float or fixed-point emulation, both inputs known) for calibration,
accuracy prediction and tests.

Data flow (per layer, post-LayerNorm):
  h → Q, K, V (linear, server weights; 1/√d_head folded into Q) → scores = Q·Kᵀ
  (matrix triples) → softmax (Comet: ReLU-softmax; reference: exp) with the public
  padding mask → context = P·V → output linear → LayerNorm(h + ·) → FFN
  (linear, GeLU/SMU, linear) → LayerNorm(h + ·).
Output: logits (classifier) or the last hidden states, opened to the client only.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from common.approx import functions as F
from common.approx.backend import Backend, Value
from common.approx.functions import ExpSoftmaxSite, LayerNormSite, RsqrtProbe
from common.approx.rsqrt_fit import RsqrtPlan
from common.mpc.correlations import Bind
from common.mpc.roles import CLIENT, SERVER
from common.protocol.card import ModelCard
from common.protocol.public_tables import load_public_table

Weights = dict[str, NDArray[np.float64]]


@dataclass
class ClientInput:
    """The client's private input: token ids (B, L) and the public padding mask."""

    token_ids: NDArray[np.int64]
    attention_mask: NDArray[np.int64]
    embedding_table: NDArray[np.float64] | None = None  # only with public embeddings


class SiteSource:
    """Gives the program the public constants of each site (from the card)."""

    def __init__(self, card: ModelCard) -> None:
        self.sites = card.sites

    def rsqrt(self, name: str) -> RsqrtPlan | RsqrtProbe:
        try:
            return self.sites.rsqrt[name]
        except KeyError:
            raise KeyError(f"site {name!r} is not calibrated in this card") from None

    def layernorm(self, name: str, eps: float) -> LayerNormSite:
        return self.sites.layernorm[name]

    def softmax(self, name: str) -> ExpSoftmaxSite:
        return self.sites.softmax[name]

    def observe(self, name: str, value: Value) -> None:
        """Calibration hook (no-op when running)."""


def encoder_forward(
    ops: Backend,
    card: ModelCard,
    party: int,
    shape: tuple[int, int],
    keep: NDArray,
    weights: Weights | None,
    client: ClientInput | None,
    sites: SiteSource | None = None,
    scope: Callable[..., AbstractContextManager] | None = None,
    hide_lengths: bool = False,
) -> NDArray[np.float64] | None:
    """Run the encoder; returns the opened output on the client, None on the server.

    `shape` = (B, L) and `keep` (B, L) 0/1 are public. `party` decides whose inputs are
    real (on a plain back-end pass both `weights` and `client`). `scope(layer=…)` /
    `scope(op=…)`, if given, return context managers that label the traffic.
    Cost: see docs/BENCHMARKS.md (`comet-bench model`) — per layer 6 linear layers'
    inputs, two batched matmuls and the non-linear sites.
    """
    a = card.arch
    sites = sites or SiteSource(card)
    scope = scope or (lambda **kw: nullcontext())
    plain = weights is not None and client is not None
    is_server = plain or party == SERVER
    is_client = plain or party == CLIENT
    B, L = shape
    d, H, dh = a.hidden, a.heads, a.head_dim
    f_bits = ops.frac_bits or 0  # binds matter to the shared back-end only
    keep4: NDArray | F.SecretMask = np.asarray(keep, dtype=np.float64).reshape(B, 1, 1, L)
    if hide_lengths:
        # The mask is the client's secret input (the server passes ones: the bucket):
        # zeroing padded keys costs one product per attention score.
        k = np.asarray(keep, dtype=np.float64).reshape(B, 1, 1, L) if is_client else None
        keep4 = F.SecretMask(ops.client_value(k, (B, 1, 1, L)))

    def w(name: str) -> NDArray[np.float64] | None:
        if not is_server:
            return None
        assert weights is not None
        return weights[name]

    def const(name: str, shape_: tuple[int, ...]) -> Value:
        return ops.server_constant(w(name), shape_)

    def linear(x: Value, name: str, out: int) -> Value:
        with scope(op="linear"):
            return ops.linear(x, name, out, w(name + ".w"), w(name + ".b"))

    def linear_cat(x: Value, key: str, names: list[str], out: int) -> Value:
        """Several linear layers of the same input as one: its masked input is sent
        once (the weights are concatenated along the output axis)."""
        if is_server:
            wt = np.concatenate([w(n + ".w") for n in names], axis=1)  # type: ignore[misc]
            bs = np.concatenate([w(n + ".b") for n in names])  # type: ignore[misc]
        else:
            wt = bs = None
        with scope(op="linear"):
            return ops.linear(x, key, out * len(names), wt, bs)

    def ln(x: Value, name: str) -> Value:
        site = sites.layernorm(name, a.ln_eps)
        with scope(op="layernorm"):
            return F.layernorm(ops, x, const(name + ".g", (d,)), const(name + ".b", (d,)), site)

    # -- embeddings -----------------------------------------------------------------
    with scope(layer="embed"), scope(op="embed"):
        h = _embed(ops, card, is_client, is_server, weights, client, B, L)
        if is_server:
            assert weights is not None
            pos = weights["emb.pos"][a.position_offset : a.position_offset + L]
            extra = np.broadcast_to(pos, (B, L, d)).copy()
            if a.type_vocab:
                extra += weights["emb.type"][0]
        else:
            extra = None
        h = h + ops.server_constant(extra, (B, L, d))
        h = ln(h, "emb.ln")

    for i in range(a.layers):
        p = f"L{i}"
        with scope(layer=f"layer{i}"):
            qkv = linear_cat(h, f"{p}.qkv", [f"{p}.{n}" for n in "qkv"], d)
            q, k, v = (_heads(ops, qkv[..., j * d : (j + 1) * d], B, L, H, dh) for j in range(3))

            def head_bind(j: int, perm: tuple[int, ...], key: str = f"{p}.qkv") -> Bind:
                # Q, K, V are opened straight from the linear output: server-sent only
                cols = (j * d, (j + 1) * d)
                return Bind(key, f_bits, (B, L, 3 * d), cols, (B, L, H, dh), perm)

            with scope(op="matmul"):
                kt = ops.swap(k, -1, -2)
                binds = (head_bind(0, (0, 2, 1, 3)), head_bind(1, (0, 2, 3, 1)))
                scores = ops.matmul(q, kt, binds)  # (B, H, L, L)
            sites.observe(f"{p}.logits", scores)
            with scope(op="softmax"):
                num, inv = _softmax(ops, card, scores, keep4, sites, p)
            with scope(op="matmul"):
                ctx = ops.matmul(num, v, (None, head_bind(2, (0, 2, 1, 3))))  # (B, H, L, dh)
            if inv is not None:
                with scope(op="softmax"):
                    # softmax·V = diag(1/Σ)·(num·V): the row factor meets dh columns, not L
                    ctx = F.mul_broadcast(ops, ctx, inv)
            ctx = ops.swap(ctx, 1, 2).reshape(B, L, d)
            h = ln(h + linear(ctx, f"{p}.o", d), f"{p}.ln1")
            ff = linear(h, f"{p}.ff1", a.ffn)
            sites.observe(f"{p}.gelu.in", ff)
            ff_bind = Bind(f"{p}.ff1", f_bits, (B, L, a.ffn), (0, a.ffn), (B, L, a.ffn), (0, 1, 2))
            with scope(op="gelu"):
                site = sites.rsqrt(f"{p}.gelu")
                if card.approx.kind == "comet":
                    assert card.approx.smu is not None
                    ff = F.smu(ops, ff, card.approx.smu, site, ff_bind)
                else:
                    assert card.approx.gelu_form is not None
                    ff = F.gelu_reference(ops, ff, card.approx.gelu_form, site, ff_bind)
            h = ln(h + linear(ff, f"{p}.ff2", d), f"{p}.ln2")

    sites.observe("output.hidden", h)
    with scope(layer="head"):
        if a.head == "none":
            with scope(op="output"):
                return ops.output(h, to=CLIENT)
        x = h[:, 0, :]
        if a.pooler_act != "none":
            x = linear(x, "pool", d)
            with scope(op="pooler"):
                x = _pooler_act(ops, card, x, sites)
        logits = linear(x, "cls", a.num_labels)
        sites.observe("output.logits", logits)
        with scope(op="output"):
            return ops.output(logits, to=CLIENT)


def _softmax(
    ops: Backend,
    card: ModelCard,
    scores: Value,
    keep4: NDArray | F.SecretMask,
    sites: SiteSource,
    p: str,
) -> tuple[Value, Value | None]:
    """(numerator, per-row 1/Σ) of the attention softmax; 1/Σ is None when the
    numerator is already normalised (the exact softmax during calibration)."""
    if card.approx.kind == "comet":
        return F.relu_softmax_parts(
            ops,
            scores,
            keep4,
            card.approx.relu_mu,
            card.approx.relu_eps,
            sites.rsqrt(f"{p}.softmax.relu"),
            sites.rsqrt(f"{p}.softmax.sum"),
        )
    site = sites.softmax(f"{p}.softmax")
    if isinstance(site, F.SoftmaxProbe):
        return site.apply(ops, scores, keep4), None
    return F.exp_softmax_parts(ops, scores, keep4, site)


def _pooler_act(ops: Backend, card: ModelCard, x: Value, sites: SiteSource) -> Value:
    act = card.arch.pooler_act
    if act == "relu":
        return F.smu(ops, x, F.SmuParams(0.0, card.approx.relu_form_mu), sites.rsqrt("pool.act"))
    if card.approx.kind == "comet":
        return F.algebraic_tanh(ops, x, sites.rsqrt("pool.act"))
    assert card.approx.tanh_form is not None
    return F.odd_form(ops, x, card.approx.tanh_form, sites.rsqrt("pool.act"))


def _heads(ops: Backend, x: Value, B: int, L: int, H: int, dh: int) -> Value:
    return ops.swap(x.reshape(B, L, H, dh), 1, 2)


def _embed(
    ops: Backend,
    card: ModelCard,
    is_client: bool,
    is_server: bool,
    weights: Weights | None,
    client: ClientInput | None,
    B: int,
    L: int,
) -> Value:
    """Token embeddings as shares.

    Private (default): the client's one-hot rows times the server's table, as a linear
    layer whose input the client holds entirely (`Mpc.lookup`) — the client sends its
    masked one-hot in Z_2^48 (6·B·L·V bytes, 1 round) and the offline phase makes the
    mask r·E under HE.
    Public embeddings: the client looks the rows up itself (the table was given to it).
    """
    a = card.arch
    V, d = a.vocab_size, a.hidden
    if card.public_embeddings:
        rows = None
        if is_client:
            assert client is not None
            table = client.embedding_table
            if table is None and card.embedding_source:
                table = load_public_table(card.embedding_source, card.embedding_digest)
            if table is None:
                raise ValueError("public embeddings: the client needs the embedding table")
            rows = table[client.token_ids]
        return ops.client_value(rows, (B, L, d))
    onehot = None
    if is_client:
        assert client is not None
        ids = np.asarray(client.token_ids, dtype=np.int64)
        if ids.shape != (B, L):
            raise ValueError(f"token ids must have shape {(B, L)}, got {ids.shape}")
        if ids.min() < 0 or ids.max() >= V:
            raise ValueError(f"token ids must lie in [0, {V})")
        onehot = np.zeros((B, L, V))
        np.put_along_axis(onehot, ids[..., None], 1.0, axis=-1)
    table = weights["emb.word"] if is_server and weights is not None else None
    return ops.lookup(onehot, (B, L, V), "emb.word", d, table)
