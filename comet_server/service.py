"""The gRPC service: one private inference per `Session` stream, isolated per client.

Each session runs the protocol on its own worker thread (the server's side of
`common.protocol.run.private_forward`) while the RPC's handler streams the worker's
messages out. A bounded outbox gives backpressure; a reader thread with a timeout on
the inbox detects a stalled client; the RPC's termination callback wakes the worker at
once when a client vanishes. Every failure ends only its own session, with a gRPC
status a person can read (see docs/PROTOCOL.md).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from comet_server.registry import ServedModel
from common.he.crt_bfv import CrtBfvParams
from common.he.executor import HeExecutor
from common.mpc.preprocessing import make_provider
from common.mpc.roles import SERVER
from common.protocol.budget import refusal, session_budget
from common.protocol.card import ModelCard
from common.protocol.generate import check_generate, generate_party
from common.protocol.prepared import (
    PreparedError,
    PreparedStore,
    SetInfo,
    StoreFull,
    new_set_id,
    plans_nbytes,
    pools_of,
)
from common.protocol.run import offline_phase, online_phase
from common.protocol.session import (
    PROTOCOL_VERSION,
    InvalidInput,
    card_for_output,
    check_start,
    resolve_output,
)
from common.transport import ChannelClosed, ProtocolMismatch
from common.transport.stream import (
    CHUNK_BYTES,
    MAX_FRAME_BYTES,
    Inbox,
    PeerError,
    StreamChannel,
    StreamReader,
)
from proto import comet_pb2 as pb
from proto import comet_pb2_grpc as pb_grpc

log = logging.getLogger("comet.server")

OUTBOX_MESSAGES = 32  # ≤ 32 MiB of chunks waiting for a slow client
# Time budget of one session's protocol per token and layer, on top of the timeouts:
# BERT-base measured 2.4 s per token·layer on this 2-core machine (HE offline phase,
# one session alone, docs/BENCHMARKS.md); 10 s leaves 4× room, times the sessions that
# may share the cores.
TOKEN_LAYER_SECONDS = 10.0
# Once a session is planned its deadline follows the plan's HE work instead: the
# masked coefficients the HE offline phase returns (`HeProvider.exposure`) measure it
# across model widths — the default model's demo took 6.6 µs per coefficient (146 s,
# 2^24.4 coefficients, docs/BENCHMARKS.md): 50 µs leaves 7× room — plus
# `ONLINE_TOKEN_LAYER_SECONDS` per token·layer for the online phase (BERT-base at 128
# tokens: 0.015 s loopback, 0.05 s over the WAN profile).
HE_COEFFICIENT_SECONDS = 50e-6
ONLINE_TOKEN_LAYER_SECONDS = 1.0
OUTPUT_POLICIES = ("auto", "logits", "hidden", "both")


class _Deadline:
    """A session's total deadline, counted from its start; `reset` sets a new budget
    (from the same start) once the plan is known."""

    def __init__(self, seconds: float) -> None:
        self.start = time.monotonic()
        self.seconds = seconds

    def reset(self, seconds: float) -> None:
        self.seconds = seconds

    def check(self) -> None:
        if time.monotonic() - self.start > self.seconds:
            raise SessionDeadline(
                f"session closed: it ran past its deadline of {self.seconds:.0f} s"
            )


@dataclass
class Limits:
    max_sessions: int = 4
    session_timeout: float = 600.0  # seconds without progress (receive or send)
    max_batch: int = 8
    chunk_bytes: int = CHUNK_BYTES
    max_frame_bytes: int = MAX_FRAME_BYTES
    handshake_timeout: float = 30.0  # for Hello, Start and the final Goodbye
    max_tokens: int | None = None  # batch × seq_len; None: `default_max_tokens`
    session_memory: int | None = None  # bytes per session (plan estimate); None: a share
    outputs: str = "auto"  # auto: logits for a classifier, hidden for a bare encoder
    max_new_tokens: int = 64  # decoders: the most tokens one generation session produces


def token_bytes(card: ModelCard) -> int:
    """Estimated peak memory of one session per token (B·L) of `card`, in bytes.

    Dominated by the one-hot token rows and their masks (vocabulary × 8 bytes, a few
    live copies while planning; 6.5 GB measured for MiniLM at 8×512 tokens), plus the
    per-token correlations of every layer.
    """
    a = card.arch
    return 64 * a.vocab_size + 64 * a.layers * (4 * a.hidden + a.ffn)


def frame_bytes_per_token(card: ModelCard) -> int:
    """Upper bound of the largest frame per token: the embedding's HE upload.

    Coefficient packing puts ≤ N entries of the (tokens × vocabulary) one-hot operand in
    one ciphertext of at most 8·N bytes per data-level modulus (`CrtBfvParams.upload_max`);
    2× for padding and serialization overhead (measured with 3 moduli: ≈ 3 GB for 8×512
    MiniLM tokens, 0.75 MB/token).
    """
    params = CrtBfvParams()
    return 2 * (params.upload_max // params.poly_degree) * card.arch.vocab_size


def default_max_tokens(cards: list[ModelCard], limits: Limits, available: int) -> int:
    """The largest B·L whose estimated memory fits half of `available` bytes shared by
    `max_sessions` sessions and whose largest frame fits the frame limit."""
    per_session = available // 2 // limits.max_sessions
    worst = max(cards, key=token_bytes)
    by_memory = per_session // token_bytes(worst)
    by_frame = limits.max_frame_bytes // max(frame_bytes_per_token(c) for c in cards)
    return int(max(1, min(by_memory, by_frame)))


def available_memory() -> int:
    """MemAvailable from /proc/meminfo (bytes); physical memory where that is missing."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def allowed_outputs(card: ModelCard, policy: str) -> tuple[str, ...]:
    """Which outputs the server gives for `card` under `policy` (see docs/SECURITY.md)."""
    classifier = card.arch.head == "classifier"
    if policy == "auto":
        return ("logits",) if classifier else ("hidden",)
    if policy == "both":
        return ("logits", "hidden") if classifier else ("hidden",)
    if policy == "logits":
        return ("logits",) if classifier else ()
    return ("hidden",)


class ShuttingDown(ChannelClosed):
    """The server is stopping: the session ends with UNAVAILABLE."""


class SessionDeadline(ChannelClosed):
    """The session ran past its total deadline."""


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_DONE = object()


def _unwrap(msg: pb.ClientMessage) -> Any:
    kind = msg.WhichOneof("kind")
    if kind is None:
        raise ProtocolMismatch("malformed message: empty ClientMessage")
    return getattr(msg, kind)


def _expect(inbox: Inbox, cls: type, timeout: float) -> Any:
    try:
        item = inbox.get(timeout=timeout)
    except queue.Empty:
        raise ChannelClosed(f"no {cls.__name__} from the client within {timeout:g} s") from None
    if isinstance(item, Exception):
        inbox.fail(item)
        raise item
    if not isinstance(item, cls):
        raise ProtocolMismatch(
            f"out-of-order message: expected {cls.__name__}, got {type(item).__name__}"
        )
    return item


class CometService(pb_grpc.CometServicer):
    """Serves `models` (the first is the default) with `provider` ("he" unless testing)."""

    def __init__(
        self,
        models: dict[str, ServedModel],
        provider: str = "he",
        limits: Limits | None = None,
        executor: HeExecutor | None = None,
        prepared: PreparedStore | None = None,
    ) -> None:
        if not models:
            raise ValueError("a server needs at least one model")
        self.models = models
        self.default = next(iter(models))
        self.provider = provider
        self.prepared = prepared  # the store of prepared offline phases (None: none kept)
        self.store_id = prepared.store_id if prepared is not None else ""
        self.executor = executor  # where sessions' server-side HE work runs (None: inline)
        self.limits = limits or Limits()
        if self.limits.outputs not in OUTPUT_POLICIES:
            raise ValueError(f"unknown output policy {self.limits.outputs!r}")
        if self.limits.max_tokens is None:
            cards = [m.compiled.card for m in models.values()]
            self.limits.max_tokens = default_max_tokens(cards, self.limits, available_memory())
        if self.limits.session_memory is None:
            self.limits.session_memory = available_memory() // self.limits.max_sessions
        self.stopping = threading.Event()
        self._inboxes: set[Inbox] = set()
        self._slots = threading.BoundedSemaphore(self.limits.max_sessions)
        self._lock = threading.Lock()
        self.active = 0
        self.completed = 0
        if prepared is not None:
            # Plan the shapes of the stored sets now, so that their (online-only)
            # inferences do not wait for a planning run (≈ 0.5 s for the default model).
            threading.Thread(target=self.warm_plans, name="warm-plans", daemon=True).start()

    def warm_plans(self) -> int:
        """Plan each (model, output, shape) that a stored prepared set was made for;
        returns how many were planned. Errors are logged, never raised: a set whose
        model is no longer served is refused when it is named anyway."""
        assert self.prepared is not None
        done = 0
        shapes = {
            (i.model, i.output, i.batch, i.seq_len, i.hide_lengths) for i in self.prepared.list()
        }
        for name, output, batch, seq_len, hide in sorted(shapes):
            model = self.models.get(name)
            if model is None or model.is_decoder or self.stopping.is_set():
                continue
            try:
                run_card = card_for_output(model.compiled.card, output)
                model.plans.plan(
                    run_card, (batch, seq_len), np.ones((batch, seq_len)),
                    model.compiled.weights, hide_lengths=hide, matrices=model.matrices,
                )  # fmt: skip
                done += 1
            except Exception as e:  # a stale set's shape: its use is refused later
                log.info("could not plan %s %d × %d ahead: %s", name, batch, seq_len, e)
        return done

    def shutdown(self) -> None:
        """Stop: every session ends at its next message with UNAVAILABLE (a waiting
        receive is woken at once); the RPC handlers return without waiting for their
        workers' HE work."""
        self.stopping.set()
        with self._lock:
            inboxes = list(self._inboxes)
        for inbox in inboxes:
            inbox.fail(ShuttingDown("the server is shutting down"))

    # -- RPCs ---------------------------------------------------------------------------
    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext):  # noqa: N802
        infos = []
        for m in self.models.values():
            a = m.compiled.card.arch
            infos.append(
                pb.ModelInfo(
                    name=m.name,
                    approx=m.compiled.card.approx.kind,
                    head="lm" if m.is_decoder else a.head,
                    layers=a.layers,
                    hidden=a.hidden,
                    max_positions=a.max_context if m.is_decoder else a.max_positions,
                    card_digest=m.compiled.card.digest(),
                    kind="decoder" if m.is_decoder else "encoder",
                )
            )
        return pb.ListModelsResponse(protocol_version=PROTOCOL_VERSION, models=infos)

    def Session(  # noqa: N802
        self, request_iterator: Iterator[pb.ClientMessage], context: grpc.ServicerContext
    ) -> Iterator[pb.ServerMessage]:
        if not self._slots.acquire(blocking=False):
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"server busy: {self.limits.max_sessions} sessions running (the limit); "
                "retry later",
            )
        sid = uuid.uuid4().hex[:8]
        reader = StreamReader(request_iterator, _unwrap)
        outbox: queue.Queue = queue.Queue(maxsize=OUTBOX_MESSAGES)
        gone = threading.Event()
        with self._lock:
            self._inboxes.add(reader.inbox)
        if self.stopping.is_set():
            reader.inbox.fail(ShuttingDown("the server is shutting down"))

        def on_done() -> None:
            gone.set()
            reader.inbox.fail(PeerError("the client went away"))

        context.add_callback(on_done)
        send_timeout = self.limits.session_timeout

        def send(msg: Any) -> None:
            # A client that stops reading must not hold its slot: give up (and cancel
            # the RPC, whose handler may be stuck in a gRPC write) after `send_timeout`.
            deadline = time.monotonic() + send_timeout
            while not gone.is_set():
                try:
                    outbox.put(msg, timeout=0.25)
                    return
                except queue.Full:
                    if time.monotonic() > deadline:
                        context.cancel()
                        raise PeerError(f"the client read nothing for {send_timeout:g} s") from None
            raise PeerError("the client went away")

        worker = threading.Thread(
            target=self._worker,
            args=(sid, context.peer(), reader.inbox, send),
            daemon=True,
            name=f"comet-session-{sid}",
        )
        with self._lock:
            self.active += 1
        worker.start()
        try:
            while True:
                if self.stopping.is_set():
                    # Do not wait for the worker's HE work: tell the client now.
                    context.abort(
                        grpc.StatusCode.UNAVAILABLE,
                        "the server is shutting down; the session was not completed, retry later",
                    )
                try:
                    item = outbox.get(timeout=0.25)
                except queue.Empty:
                    # A vanished client: the worker cannot post _DONE, and this
                    # handler's pool thread must not wait for it forever.
                    if gone.is_set() and not worker.is_alive():
                        return
                    continue
                if item is _DONE:
                    return
                if isinstance(item, _Abort):
                    context.abort(item.code, item.message)
                yield item
        finally:
            with self._lock:
                self._inboxes.discard(reader.inbox)

    # -- one session ----------------------------------------------------------------------
    def _worker(self, sid: str, peer: str, inbox: Inbox, send: Callable[[Any], None]) -> None:
        t0 = time.perf_counter()
        outcome = "ok"
        try:
            self._session(sid, peer, inbox, send)
        except _Abort as e:
            outcome = f"{e.code.name}: {e.message}"
            self._finish(send, e)
        except InvalidInput as e:
            outcome = f"invalid input: {e}"
            self._finish(send, _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(e)))
        except ProtocolMismatch as e:
            outcome = f"protocol error: {e}"
            self._finish(send, _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(e)))
        except PeerError as e:
            outcome = f"client gone: {e}"
        except ShuttingDown as e:
            outcome = f"stopped: {e}"
            msg = "the server is shutting down; the session was not completed, retry later"
            self._finish(send, _Abort(grpc.StatusCode.UNAVAILABLE, msg))
        except SessionDeadline as e:
            outcome = f"deadline: {e}"
            self._finish(send, _Abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(e)))
        except ChannelClosed as e:
            outcome = f"timed out: {e}"
            msg = f"session closed: {e}"
            self._finish(send, _Abort(grpc.StatusCode.DEADLINE_EXCEEDED, msg))
        except Exception as e:
            log.exception("session %s: internal error", sid)
            outcome = f"internal error: {e!r}"
            self._finish(send, _Abort(grpc.StatusCode.INTERNAL, f"internal server error ({sid})"))
        finally:
            self._finish(send, _DONE)
            with self._lock:
                self.active -= 1
                self.completed += 1
            self._slots.release()
            log.info(
                "session %s (%s) ended after %.1f s: %s",
                sid,
                peer,
                time.perf_counter() - t0,
                outcome,
            )

    @staticmethod
    def _finish(send: Callable[[Any], None], item: Any) -> None:
        with contextlib.suppress(PeerError):  # nobody left to tell
            send(item)

    def _session(self, sid: str, peer: str, inbox: Inbox, send: Callable) -> None:
        lim = self.limits
        hello = _expect(inbox, pb.Hello, lim.handshake_timeout)
        if hello.protocol_version != PROTOCOL_VERSION:
            raise _Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"protocol version mismatch: the client speaks {hello.protocol_version}, "
                f"this server speaks {PROTOCOL_VERSION}; upgrade the older side",
            )
        name = hello.model or self.default
        model = self.models.get(name)
        if model is None:
            raise _Abort(
                grpc.StatusCode.NOT_FOUND,
                f"unknown model {name!r}; this server serves: {', '.join(self.models)}",
            )
        card = model.compiled.card
        send(
            pb.ServerMessage(
                welcome=pb.Welcome(
                    protocol_version=PROTOCOL_VERSION,
                    model=name,
                    card_json=model.card_json,
                    card_digest=card.digest(),
                    tokenizer=[
                        pb.TokenizerFile(name=k, data=v) for k, v in model.tokenizer_files.items()
                    ],
                    max_batch=lim.max_batch,
                    provider=self.provider,
                    max_frame_bytes=lim.max_frame_bytes,
                    max_tokens=lim.max_tokens or 0,
                    keeps_prepared=self.prepared is not None,
                    prepared_store=self.store_id,
                    max_new_tokens=lim.max_new_tokens if model.is_decoder else 0,
                )
            )
        )
        start = _expect(inbox, pb.Start, lim.handshake_timeout)
        if model.is_decoder or start.HasField("generate"):
            self._generate(sid, peer, model, start, inbox, send)
            return
        output = resolve_output(card, start.output or "auto")
        allowed = allowed_outputs(card, lim.outputs)
        if output not in allowed:
            raise _Abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this server does not give {output!r} outputs of model {name!r}; it gives: "
                f"{', '.join(allowed) or 'nothing'}",
            )
        assert lim.max_tokens is not None
        tokens = start.batch * start.seq_len
        if tokens > lim.max_tokens:
            raise _Abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"batch × seq_len = {start.batch} × {start.seq_len} = {tokens} tokens exceeds "
                f"this server's limit of {lim.max_tokens} tokens per session",
            )
        mask = check_start(
            card,
            start.batch,
            start.seq_len,
            np.frombuffer(start.attention_mask, dtype=np.uint8),
            lim.max_batch,
        )
        log.info(
            "session %s (%s): model %s, batch %d × %d tokens, output %s",
            sid, peer, name, start.batch, start.seq_len, output,
        )  # fmt: skip
        deadline = _Deadline(self._work_seconds(tokens * card.arch.layers * TOKEN_LAYER_SECONDS))
        ch = self._channel(inbox, send, deadline)
        run_card = card_for_output(card, output)
        shape = (start.batch, start.seq_len)
        if start.hide_lengths and not mask.all():
            raise InvalidInput("with hide_lengths the attention mask must be all ones")
        planned = model.plans.plan(
            run_card, shape, mask, model.compiled.weights,
            hide_lengths=start.hide_lengths, matrices=model.matrices,
        )  # fmt: skip
        provider = make_provider(self.provider, executor=self.executor)
        budget = session_budget(planned.segments(), SERVER, provider)
        why = refusal(budget, lim.max_frame_bytes, lim.session_memory)
        if why is not None:
            raise _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, why)
        deadline.reset(
            self._work_seconds(
                HE_COEFFICIENT_SECONDS * budget.exposure
                + ONLINE_TOKEN_LAYER_SECONDS * tokens * card.arch.layers
            )
        )
        if start.prepare:
            self._prepare(sid, peer, name, card, output, planned, start, send, ch, provider)
        else:
            pools = self._claim(sid, name, card, output, planned, start, send)
            if pools is None:
                pools = offline_phase(ch, planned, provider)
            online_phase(ch, planned, pools)
        _expect(inbox, pb.Goodbye, lim.handshake_timeout)
        log.info(
            "session %s: sent %d B, received %d B (payload)", sid, ch.payload_sent,
            ch.payload_received,
        )  # fmt: skip

    def _work_seconds(self, work: float) -> float:
        """A session's total time budget for `work` seconds of protocol work alone: the
        session timeout + two handshakes + the work times the sessions that may share
        the machine."""
        lim = self.limits
        return lim.session_timeout + 2 * lim.handshake_timeout + work * lim.max_sessions

    def _channel(self, inbox: Inbox, send: Callable, deadline: _Deadline) -> StreamChannel:
        """The session's protocol channel, ended by shutdown or by its total `deadline`
        (`TOKEN_LAYER_SECONDS` per token·layer until the session is planned; encoders
        then reset it from the plan, `HE_COEFFICIENT_SECONDS`; see `_work_seconds`)."""

        def check() -> None:
            if self.stopping.is_set():
                raise ShuttingDown("the server is shutting down")
            deadline.check()

        return StreamChannel(
            SERVER,
            inbox,
            lambda f: send(pb.ServerMessage(frame=f)),
            timeout=self.limits.session_timeout,
            chunk_bytes=self.limits.chunk_bytes,
            max_frame_bytes=self.limits.max_frame_bytes,
            check=check,
        )

    def _generate(
        self, sid: str, peer: str, model: ServedModel, start: pb.Start, inbox: Inbox,
        send: Callable,
    ) -> None:  # fmt: skip
        """The server's side of one generation session (common.protocol.generate):
        prefill, then one step per token until the client's flag says stop, never more
        than the `max_new_tokens` agreed in Start (≤ `Limits.max_new_tokens`)."""
        lim, name = self.limits, model.name
        if not model.is_decoder:
            raise _Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model {name!r} is not a decoder: it cannot generate (use `comet-client "
                "classify`); decoders here: "
                + (", ".join(m.name for m in self.models.values() if m.is_decoder) or "none"),
            )
        if not start.HasField("generate"):
            raise _Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model {name!r} is a decoder: it serves generation sessions only "
                "(use `comet-client generate`)",
            )
        card = model.compiled.card
        g = start.generate
        assert lim.max_tokens is not None
        if g.prompt_len > lim.max_tokens:
            raise _Abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"a prompt of {g.prompt_len} tokens exceeds this server's limit of "
                f"{lim.max_tokens} tokens per session",
            )
        if g.max_new_tokens > lim.max_new_tokens:
            raise _Abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{g.max_new_tokens} new tokens exceeds this server's limit of "
                f"{lim.max_new_tokens} per session",
            )
        check_generate(card, g.prompt_len, g.max_new_tokens)  # type: ignore[arg-type]
        # Every step processes ≤ 1 new position (the prefill: the prompt): the same
        # per-token·layer budget as a classification session of that many tokens.
        positions = g.prompt_len + g.max_new_tokens
        log.info(
            "session %s (%s): model %s, generation: prompt of %d tokens, ≤ %d new",
            sid, peer, name, g.prompt_len, g.max_new_tokens,
        )  # fmt: skip
        deadline = _Deadline(self._work_seconds(positions * card.arch.layers * TOKEN_LAYER_SECONDS))
        ch = self._channel(inbox, send, deadline)
        res = generate_party(
            ch,
            card,  # type: ignore[arg-type]
            make_provider(self.provider, executor=self.executor),
            g.prompt_len,
            g.max_new_tokens,
            weights=model.compiled.weights,
            matrices=model.matrices,
        )
        _expect(inbox, pb.Goodbye, lim.handshake_timeout)
        log.info(
            "session %s: generated %d tokens; sent %d B, received %d B (payload)", sid,
            len(res.costs), ch.payload_sent, ch.payload_received,
        )  # fmt: skip

    # -- prepared offline phases ----------------------------------------------------------
    def _prepare(self, sid, peer, name, card, output, planned, start, send, ch, provider) -> None:
        """Run only the offline phase and store this party's half (see docs/PROTOCOL.md)."""
        store = self.prepared
        if store is None:
            raise _Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this server keeps no prepared sets (it runs without --prepared-dir)",
            )
        owner = _host(peer)
        nbytes = plans_nbytes(planned.segments(), SERVER)
        try:
            token = store.reserve(nbytes, name, owner)
        except StoreFull as e:
            raise _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)) from None
        try:
            set_id = new_set_id()
            expiry = store.limits.expiry or 0.0
            send(pb.ServerMessage(prepared=pb.PreparedAnswer(id=set_id, accepted=True,
                                                             expires_in=expiry)))  # fmt: skip
            pools = offline_phase(ch, planned, provider)
            info = SetInfo(
                id=set_id, model=name, card_digest=card.digest(), plan_digest=planned.digest(),
                batch=start.batch, seq_len=start.seq_len, output=output, provider=self.provider,
                party=SERVER, created=time.time(), nbytes=nbytes,
                segments=tuple(planned.segments()), owner=owner,
                hide_lengths=start.hide_lengths,
            )  # fmt: skip
            store.save(info, pools, token)
        finally:
            store.release(token)
        log.info("session %s: prepared set %s… stored (%d bytes)", sid, set_id[:8], nbytes)

    def _claim(self, sid, name, card, output, planned, start, send) -> dict | None:
        """The pools of the prepared set the client named (consumed now, before the
        first online message), or None (no set named; or refused: the client is told
        why and both run the offline phase inline)."""
        set_id = start.prepared_id
        if not set_id:
            return None
        store = self.prepared
        try:
            if store is None:
                raise PreparedError("this server keeps no prepared sets")
            info = store.get(set_id)
            info.check(card.digest(), planned.digest(), start.batch, start.seq_len)
            if (info.model, info.output, info.provider, info.hide_lengths) != (
                name, output, self.provider, start.hide_lengths
            ):  # fmt: skip
                raise PreparedError(
                    f"prepared set {set_id[:8]} was made for model {info.model!r}, output "
                    f"{info.output!r}, provider {info.provider!r}"
                )
            _, arrays = store.claim(set_id)
            pools = pools_of(planned.segments(), arrays)
        except PreparedError as e:
            log.info("session %s: prepared set refused: %s", sid, e)
            send(pb.ServerMessage(prepared=pb.PreparedAnswer(id=set_id, accepted=False,
                                                             reason=str(e))))  # fmt: skip
            return None
        send(pb.ServerMessage(prepared=pb.PreparedAnswer(id=set_id, accepted=True)))
        log.info("session %s: online phase only, prepared set %s…", sid, set_id[:8])
        return pools


def _host(peer: str) -> str:
    """The client's host from a gRPC peer string (ipv4:1.2.3.4:5678, ipv6:[::1]:5678)."""
    kind, _, rest = peer.partition(":")
    host = rest.rsplit(":", 1)[0] if kind in ("ipv4", "ipv6") else rest
    return host.strip("[]") or peer
