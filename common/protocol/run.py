"""Run a compiled model privately: one party's whole run over a `Channel`.

`private_forward` is what both the server and the client call (each with its own
inputs); `local_private_forward` runs both in one process (tests, benchmarks, the
accuracy study).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from common.approx.backend import PlainBackend, SharedBackend
from common.mpc.correlations import Plan, Pool, SegmentedPool, SegmentedRecorder
from common.mpc.engine import Mpc
from common.mpc.preprocessing import HeProvider, InsecureDealer, make_provider, run_stages
from common.mpc.ring import FixedPoint, PublicMatrices
from common.mpc.roles import CLIENT, SERVER
from common.protocol.card import CompiledModel, ModelCard, linear_weight_bits
from common.protocol.program import ClientInput, Weights, encoder_forward
from common.transport import Channel, Meter, NullChannel, run_local


@dataclass
class ForwardResult:
    output: NDArray[np.float64] | None  # the client's opened output; None on the server
    meter: Meter


@dataclass
class PlannedForward:
    """One party's planned forward pass: the per-layer correlation plans (public: they
    depend on the card and shape only) and the program that consumes them online."""

    party: int
    recorder: SegmentedRecorder
    program: Callable[[Mpc], NDArray[np.float64] | None]
    fxp: FixedPoint
    # The server's encoded weights, shared by the planning run and the online phase.
    matrices: PublicMatrices = field(default_factory=PublicMatrices)

    def segments(self) -> dict[str, Plan]:
        return {layer: seg.plan for layer, seg in self.recorder.recorders.items()}

    def digest(self) -> str:
        """SHA-256 (hex) of every segment's name and plan, in order: what a stored
        offline phase must have been made for."""
        h = hashlib.sha256()
        for layer, plan in self.segments().items():
            h.update(layer.encode() + b"\0" + plan.digest())
        return h.hexdigest()


def plan_forward(
    party: int,
    card: ModelCard,
    shape: tuple[int, int],
    keep: NDArray,
    weights: Weights | None,
    client: ClientInput | None,
    fxp: FixedPoint | None = None,
    hide_lengths: bool = False,
    matrices: PublicMatrices | None = None,
) -> PlannedForward:
    """Plan one party's forward pass (no communication); see `private_forward`.

    `hide_lengths`: the padding mask is the client's secret input of the attention (the
    server passes an all-ones `keep`: it learns only the padded shape). `matrices`: the
    server's memo of its encoded weights (a served model keeps one for all sessions:
    encoding BERT-base's weights takes about a second); by default one per plan."""
    if party == SERVER and (weights is None or client is not None):
        raise ValueError("the server runs with the weights and without client input")
    if party == CLIENT and (client is None or weights is not None):
        raise ValueError("the client runs with its input and without the weights")
    fxp = fxp or FixedPoint()
    program = _program(party, card, shape, keep, weights, client, hide_lengths)
    # Plan per layer (the planning channel's layer label), so that the offline phase
    # is produced — and metered — layer by layer.
    null = NullChannel(party)
    rec = SegmentedRecorder(lambda: null.meter.current.layer or "")
    matrices = PublicMatrices() if matrices is None else matrices
    program(Mpc(null, rec, fxp, matrices=matrices))
    bits = linear_weight_bits(card, fxp.frac_bits)
    for seg in rec.recorders.values():
        seg.plan.weight_bits = bits
    return PlannedForward(party, rec, program, fxp, matrices)


def _program(
    party: int,
    card: ModelCard,
    shape: tuple[int, int],
    keep: NDArray,
    weights: Weights | None,
    client: ClientInput | None,
    hide_lengths: bool,
) -> Callable[[Mpc], NDArray[np.float64] | None]:
    def program(mpc: Mpc) -> NDArray[np.float64] | None:
        return encoder_forward(
            SharedBackend(mpc),
            card,
            party,
            shape,
            keep,
            weights,
            client,
            scope=lambda **kw: mpc.ch.scope(**kw),
            hide_lengths=hide_lengths,
        )

    return program


class PlanCache:
    """The server's plans of recent shapes, so that a served model plans each shape once.

    A plan depends on the card, the shape (B, L) and `hide_lengths` only, never on the
    padding mask (the mask only multiplies the attention scores) nor on a session's
    data; the program that consumes it is rebuilt per session with that session's mask.
    A wrong reuse could not go unnoticed anyway: the client compares plan digests (or
    a prepared set's) before any correlation is used. Planning the default model costs
    ≈ 0.5 s of server CPU, on the critical path of every prepared (online-only) run.
    One cache per served model: the server's plan holds that model's weights (for
    its linear masks), and two models may share a card. Thread-safe; holds at most
    `size` plans (least recently used dropped first).
    """

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._plans: OrderedDict[tuple, PlannedForward] = OrderedDict()
        self._lock = threading.Lock()
        self._weights: Weights | None = None
        self.hits = 0
        self.misses = 0

    def plan(
        self,
        card: ModelCard,
        shape: tuple[int, int],
        keep: NDArray,
        weights: Weights,
        hide_lengths: bool = False,
        matrices: PublicMatrices | None = None,
    ) -> PlannedForward:
        """The server's `plan_forward(SERVER, card, shape, keep, weights, None, …)`,
        planned once per (card digest, shape, hide_lengths) and rebuilt for `keep`.
        `weights` must be this cache's model's (checked: a cache serves one model)."""
        key = (card.digest(), tuple(shape), bool(hide_lengths))
        if self._weights is None:
            self._weights = weights
        elif weights is not self._weights:
            raise ValueError("a PlanCache serves one model's weights")
        with self._lock:
            hit = self._plans.get(key)
            if hit is not None:
                self._plans.move_to_end(key)
                self.hits += 1
        if hit is None:
            planned = plan_forward(
                SERVER, card, shape, keep, weights, None,
                hide_lengths=hide_lengths, matrices=matrices,
            )  # fmt: skip
            with self._lock:
                self.misses += 1
                self._plans[key] = planned
                while len(self._plans) > self.size:
                    self._plans.popitem(last=False)
            return planned
        program = _program(SERVER, card, shape, keep, weights, None, hide_lengths)
        return replace(hit, program=program)


def offline_phase(
    ch: Channel, planned: PlannedForward, provider: HeProvider | InsecureDealer
) -> dict[str, Pool]:
    """The input-independent phase: HE key setup, then every layer's correlations,
    consecutive layers' HE stages overlapped (`run_stages`)."""
    provider.setup(ch)
    segments = planned.recorder.recorders.items()
    if isinstance(provider, HeProvider):
        staged = [(layer, provider.stages(ch, seg.plan, seg.weights)) for layer, seg in segments]
        return run_stages(ch, staged)
    pools = {}
    for layer, seg in segments:
        with ch.scope(layer=layer):
            pools[layer] = provider.generate(ch, seg.plan, seg.weights)
    return pools


def online_phase(ch: Channel, planned: PlannedForward, pools: dict[str, Pool]) -> ForwardResult:
    """The input-dependent phase, from this party's correlations `pools`."""
    with ch.scope(phase="online"):
        pool = SegmentedPool(pools, lambda: ch.meter.current.layer or "")
        out = planned.program(Mpc(ch, pool, planned.fxp, matrices=planned.matrices))
    return ForwardResult(out, ch.meter)


def private_forward(
    ch: Channel,
    card: ModelCard,
    shape: tuple[int, int],
    keep: NDArray,
    weights: Weights | None,
    client: ClientInput | None,
    provider: HeProvider | InsecureDealer,
    fxp: FixedPoint | None = None,
    hide_lengths: bool = False,
) -> ForwardResult:
    """One party's private forward pass: plan, offline phase, online phase.

    The server passes `weights` (and client=None), the client `client` (and
    weights=None). `shape` (B, L) and `keep` are public and must agree on both sides
    (the plans are compared before the offline phase). Traffic is labelled by phase,
    layer and op on `ch.meter`.
    """
    planned = plan_forward(ch.party, card, shape, keep, weights, client, fxp, hide_lengths)
    return online_phase(ch, planned, offline_phase(ch, planned, provider))


def local_private_forward(
    model: CompiledModel,
    client: ClientInput,
    provider: str = "he",
    fxp: FixedPoint | None = None,
    hide_lengths: bool = False,
) -> tuple[ForwardResult, ForwardResult]:
    """Both parties in one process over an in-process channel pair."""
    card = model.card
    shape = tuple(client.token_ids.shape)
    keep = client.attention_mask
    hl = hide_lengths

    def body(ch: Channel, role: int) -> ForwardResult:
        if role == SERVER:
            # With hidden lengths the server knows only the padded shape.
            k = np.ones_like(keep) if hl else keep
            return private_forward(
                ch, card, shape, k, model.weights, None, make_provider(provider), fxp, hl
            )
        return private_forward(
            ch, card, shape, keep, None, client, make_provider(provider), fxp, hl
        )

    return run_local(body, (SERVER,), (CLIENT,))


def plain_forward(
    model: CompiledModel,
    client: ClientInput,
    frac_bits: int | None = None,
    backend: PlainBackend | None = None,
) -> NDArray[np.float64]:
    """The same program on plaintext: float (frac_bits=None) or fixed-point emulation.

    Pass `backend=PlainBackend(f, track_risk=True)` to read its `truncation_risk`
    (and `risk_by_site`, labelled "layer.op") afterwards: the expected number of local
    truncation failures of the private run on this input (docs/SECURITY.md).
    """
    import torch

    if model.weights is None:
        raise ValueError("plain emulation needs the weights")
    shape = tuple(client.token_ids.shape)
    ops = backend or PlainBackend(frac_bits)
    with torch.no_grad():
        out = encoder_forward(
            ops,
            model.card,
            SERVER,
            shape,
            client.attention_mask,
            model.weights,
            client,
            scope=ops.scope,
        )
    assert out is not None
    return out
