"""Private generation: prefill, then one token per step, with a secret-shared KV cache.

Both parties call `generate_party` over one `Channel`. The prompt stays with the client:
it enters through the private embedding (`Mpc.lookup`), like every generated token.
Each step the last position's logits are opened to the client only; the client picks
the next token locally (`sample_next`: greedy, temperature, top-k, top-p, seeded if the
user asks) and sends the server one public flag — continue or stop — and nothing else.
The keys and values stay shared on both sides between steps (`KvCache`): a step
processes one new position against the cache instead of recomputing the prefix.

Offline correlations are produced per step, just before it (the plan of a step depends
only on public data: the cache length). `kv_cache=False` recomputes the whole prefix
every step instead (a baseline for benchmarks: the same tokens, far more work).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from common.approx.backend import PlainBackend, SharedBackend
from common.mpc.correlations import Plan, Pool
from common.mpc.engine import Mpc
from common.mpc.preprocessing import (
    HeProvider,
    InsecureDealer,
    Weight,
    make_provider,
    plan_program,
)
from common.mpc.ring import U64, FixedPoint, PublicMatrices
from common.mpc.roles import CLIENT, SERVER
from common.prg import SecureRng
from common.protocol.decoder import KvCache, Weights, decoder_forward
from common.protocol.decoder_card import CompiledDecoder, DecoderCard
from common.protocol.session import InvalidInput
from common.transport import Channel, ProtocolMismatch, run_local
from common.transport.meter import Counts, Label


# -- sampling (client only) ---------------------------------------------------------------
@dataclass(frozen=True)
class Sampling:
    """How the client picks a token from the opened logits. temperature 0: greedy
    (argmax); otherwise softmax(logits / temperature) restricted to the top_k largest
    (0: all) and to the smallest set of cumulative probability ≥ top_p. `seed` makes
    the draws reproducible (the user's choice); without it they come from the OS."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature ≥ 0, top_k ≥ 0 and 0 < top_p ≤ 1 are required")

    def uniform_source(self) -> Callable[[], float]:
        """Uniform draws in [0, 1) for `sample_next`: 53-bit floats from the project's
        cryptographic generator, keyed from the user's seed or from the OS."""
        rng = SecureRng(self.seed)

        def draw() -> float:
            return float(rng.words(1)[0] >> np.uint64(11)) * 2.0**-53

        return draw


def sample_next(logits: NDArray[np.float64], s: Sampling, uniform: Callable[[], float]) -> int:
    """One token id from one row of logits (V,), by `s`. Local: runs on the client."""
    logits = np.asarray(logits, dtype=np.float64)
    if s.temperature == 0:
        return int(np.argmax(logits))
    z = logits / s.temperature
    order = np.argsort(-z, kind="stable")
    if s.top_k:
        order = order[: s.top_k]
    p = np.exp(z[order] - z[order[0]])
    p /= p.sum()
    if s.top_p < 1:
        keep = int(np.searchsorted(np.cumsum(p), s.top_p) + 1)
        order, p = order[:keep], p[:keep] / p[:keep].sum()
    i = int(np.searchsorted(np.cumsum(p), uniform() * (1 - 1e-12), side="right"))
    return int(order[min(i, len(order) - 1)])


# -- one party's session ----------------------------------------------------------------
@dataclass
class StepCost:
    """One call of the decoder: the prefill or one generated token."""

    kind: str  # "prefill" | "token"
    positions: int  # new positions processed (prompt length, 1, or the prefix with no cache)
    context: int  # positions attended to (cache + new)
    offline: Counts
    online: Counts


@dataclass
class GenerationResult:
    """One party's view. `token_ids` and `logits` are empty on the server."""

    token_ids: list[int] = field(default_factory=list)
    logits: list[NDArray[np.float64]] = field(default_factory=list)
    costs: list[StepCost] = field(default_factory=list)
    setup: Counts = field(default_factory=Counts)


def _phase(snap: dict[Label, Counts], phase: str) -> Counts:
    out = Counts()
    for label, c in snap.items():
        if label.phase == phase:
            out += c
    return out


def _minus(a: Counts, b: Counts) -> Counts:
    return Counts(**{k: v - getattr(b, k) for k, v in a.as_dict().items()})


class DecoderSession:
    """One party's private decoder with its shared KV cache. Not thread-safe.

    `run(ids, n)` processes n new positions (the client passes their ids, the server
    None): plan (local), offline phase for this call only, online phase; returns the
    client's logits of the last position (V,), None on the server.
    """

    def __init__(
        self,
        ch: Channel,
        card: DecoderCard,
        provider: HeProvider | InsecureDealer,
        weights: Weights | None = None,
        fxp: FixedPoint | None = None,
        matrices: PublicMatrices | None = None,
    ) -> None:
        if (ch.party == SERVER) != (weights is not None):
            raise ValueError("the server runs with the weights, the client without")
        self.ch, self.card, self.provider, self.weights = ch, card, provider, weights
        self.fxp = fxp or FixedPoint()
        self.cache: KvCache | None = None
        self.costs: list[StepCost] = []
        # The server's weights, joined and encoded once for every call (and, when the
        # served model passes its own, every session).
        self.matrices = PublicMatrices() if matrices is None else matrices

    @property
    def length(self) -> int:
        return self.cache.length if self.cache else 0

    def reset(self) -> None:
        """Forget the cache (the next call starts at position 0)."""
        self.cache = None

    def _program(self, ids: NDArray[np.int64] | None, n: int):
        party, card, pos0 = self.ch.party, self.card, self.length

        def program(mpc: Mpc, cache: KvCache | None):
            return decoder_forward(
                SharedBackend(mpc), card, party, (1, n), pos0, self.weights,
                ids if party == CLIENT else None, cache,
                scope=lambda **kw: mpc.ch.scope(**kw), matrices=self.matrices,
            )  # fmt: skip

        return program

    def plan(self, n: int) -> tuple[Plan, dict[str, Weight]]:
        """The plan of the next call of `n` positions (and, on the server, its encoded
        weights): from public shapes only, n and the cache length. Local, no bytes."""
        a, pos0 = self.card.arch, self.length
        zeros = KvCache(
            [np.zeros((1, a.kv_heads, pos0, a.head_dim), U64) for _ in range(a.layers)],
            [np.zeros((1, a.kv_heads, pos0, a.head_dim), U64) for _ in range(a.layers)],
        )
        # Planning sees shapes only: placeholder ids stand for the client's tokens.
        program = self._program(np.zeros((1, n), np.int64), n)
        return plan_program(lambda m: program(m, zeros if pos0 else None), self.ch.party,
                            self.fxp, self.matrices)  # fmt: skip

    def offline(self, n: int) -> Pool:
        """The offline phase of the next call of `n` positions: the correlations its
        online phase consumes, for `plan(n)`. Cost: the provider's for that plan (HE:
        minutes and GBs per call at SmolLM2 size; the dealer: one seed)."""
        return self.provider.generate(self.ch, *self.plan(n))

    def run(self, ids: NDArray[np.int64] | None, n: int, kind: str) -> NDArray[np.float64] | None:
        pos0 = self.length
        before = self.ch.meter.snapshot()
        pool = self.offline(n)
        with self.ch.scope(phase="online"):
            logits, self.cache = self._program(ids, n)(
                Mpc(self.ch, pool, self.fxp, matrices=self.matrices), self.cache
            )
        after = self.ch.meter.snapshot()
        self.costs.append(
            StepCost(
                kind, n, pos0 + n,
                _minus(_phase(after, "offline"), _phase(before, "offline")),
                _minus(_phase(after, "online"), _phase(before, "online")),
            )
        )  # fmt: skip
        return None if logits is None else logits[0]


def check_generate(
    card: DecoderCard, prompt_len: int, max_new_tokens: int, limit: int | None = None
) -> None:
    """Validate a generation's public parameters for `card` (and a server's token
    `limit`); raises `InvalidInput` naming the bound that was crossed. Run by the client
    before it starts and by the server on receipt."""
    a = card.arch
    if prompt_len < 1:
        raise InvalidInput("empty prompt: at least one token is needed")
    if max_new_tokens < 1:
        raise InvalidInput("at least one new token must be asked for")
    if limit is not None and max_new_tokens > limit:
        raise InvalidInput(
            f"{max_new_tokens} new tokens exceeds this server's limit of {limit} per session"
        )
    if prompt_len + max_new_tokens - 1 > a.max_context:
        raise InvalidInput(
            f"prompt of {prompt_len} + {max_new_tokens} new tokens exceeds the context of "
            f"model {card.name!r} ({a.max_context} tokens)"
        )


def generate_party(
    ch: Channel,
    card: DecoderCard,
    provider: HeProvider | InsecureDealer,
    prompt_len: int,
    max_new_tokens: int,
    weights: Weights | None = None,
    prompt_ids: Sequence[int] | None = None,
    sampling: Sampling | None = None,
    on_token: Callable[[int], None] | None = None,
    kv_cache: bool = True,
    fxp: FixedPoint | None = None,
    matrices: PublicMatrices | None = None,
) -> GenerationResult:
    """One party's private generation of up to `max_new_tokens` tokens.

    Public to both: the card, `prompt_len`, `max_new_tokens`, and — one flag per
    token — whether the client continues (it stops at an end-of-sequence token of the
    card or at the limit; the server ends the session with `ProtocolMismatch` if asked
    for more than `max_new_tokens`). The server passes `weights`, the client `prompt_ids` and
    `sampling` (and `on_token`, called with each id as soon as it is picked).
    Cost: one prefill of prompt_len positions, then per token one step over the cache
    (docs/BENCHMARKS.md, "Generation"); per call an offline phase for that call only.
    """
    client = ch.party == CLIENT
    a = card.arch
    check_generate(card, prompt_len, max_new_tokens)
    if client:
        if prompt_ids is None or len(prompt_ids) != prompt_len:
            raise ValueError(f"the client needs its {prompt_len} prompt token ids")
        sampling = sampling or Sampling()
        uniform = sampling.uniform_source()
    before = ch.meter.snapshot()
    provider.setup(ch)
    result = GenerationResult(
        setup=_minus(_phase(ch.meter.snapshot(), "setup"), _phase(before, "setup"))
    )
    sess = DecoderSession(ch, card, provider, weights, fxp, matrices)
    seq = [int(t) for t in prompt_ids] if client and prompt_ids is not None else []
    ids = np.asarray([seq], dtype=np.int64) if client else None
    logits = sess.run(ids, prompt_len, "prefill")
    while True:
        if client:
            assert logits is not None and sampling is not None
            tok = sample_next(logits, sampling, uniform)
            result.token_ids.append(tok)
            result.logits.append(logits)
            seq.append(tok)
            if on_token is not None:
                on_token(tok)
            more = len(result.token_ids) < max_new_tokens and tok not in a.eos_token_ids
            with ch.scope(phase="online", layer="control", op="control"):
                ch.send_array("gen.more", np.array([int(more)], np.uint8))
        else:
            with ch.scope(phase="online", layer="control", op="control"):
                flag = int(ch.recv_array("gen.more", (1,), np.uint8)[0])
            if flag not in (0, 1):
                raise ProtocolMismatch("malformed continue flag")
            more = bool(flag)
            if more and len(sess.costs) >= max_new_tokens:
                # The server bounds the steps whatever the client asks for.
                raise ProtocolMismatch(
                    f"the client asked for more than the {max_new_tokens} tokens agreed"
                )
        if not more:
            break
        if kv_cache:
            step_ids = np.asarray([[seq[-1]]], dtype=np.int64) if client else None
            logits = sess.run(step_ids, 1, "token")
        else:  # baseline: the whole sequence again, no cache
            sess.reset()
            n = prompt_len + len(sess.costs)
            logits = sess.run(np.asarray([seq], dtype=np.int64) if client else None, n, "token")
    result.costs = sess.costs
    return result


def local_generate(
    model: CompiledDecoder,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    sampling: Sampling | None = None,
    provider: str = "insecure_dealer",
    kv_cache: bool = True,
    fxp: FixedPoint | None = None,
) -> tuple[GenerationResult, GenerationResult]:
    """Both parties in one process over an in-process channel pair: (server, client)."""
    card, n = model.card, len(prompt_ids)

    def body(ch: Channel, role: int) -> GenerationResult:
        p = make_provider(provider)
        if role == SERVER:
            return generate_party(ch, card, p, n, max_new_tokens, weights=model.weights,
                                  kv_cache=kv_cache, fxp=fxp)  # fmt: skip
        return generate_party(ch, card, p, n, max_new_tokens, prompt_ids=prompt_ids,
                              sampling=sampling, kv_cache=kv_cache, fxp=fxp)  # fmt: skip

    return run_local(body, (SERVER,), (CLIENT,))


def plain_generate(
    model: CompiledDecoder,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    frac_bits: int | None = None,
) -> tuple[list[int], list[NDArray[np.float64]]]:
    """Greedy generation of the same program on plaintext (float or fixed-point
    emulation), with the cache: (token ids, logits per step)."""
    import torch

    if model.weights is None:
        raise ValueError("plain emulation needs the weights")
    ops = PlainBackend(frac_bits)
    seq, out, logs = list(prompt_ids), [], []
    cache = None
    with torch.no_grad():
        ids = np.asarray([seq], dtype=np.int64)
        for _ in range(max_new_tokens):
            pos0 = cache.length if cache else 0
            lg, cache = decoder_forward(ops, model.card, SERVER, ids.shape, pos0, model.weights,
                                        ids, cache)  # fmt: skip
            assert lg is not None
            tok = int(np.argmax(lg[0]))
            out.append(tok)
            logs.append(lg[0])
            if tok in model.card.arch.eos_token_ids:
                break
            ids = np.asarray([[tok]], dtype=np.int64)
    return out, logs


def max_logit_error(a: Sequence[NDArray], b: Sequence[NDArray]) -> float:
    """max over steps of max |a − b| (for the steps both have)."""
    return max((float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=False)), default=math.nan)
