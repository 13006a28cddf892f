"""One private inference against a comet-server, from the client's side.

`infer()` opens a `Session` stream, checks the server's protocol version and model
card, tokenizes the texts locally with the tokenizer the server published (public
files), sends only the public shape and padding mask, runs the client's side of the
protocol (HE keys stay here) and returns the opened output — which only the client
sees — with the per-layer cost of both phases.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from comet_client.tokenizer import (
    EncoderTokenizer,
    FastTokenizer,
    TransformersTokenizer,
    encoder_tokenizer,
)
from common.mpc.preprocessing import make_provider
from common.mpc.roles import CLIENT
from common.protocol.card import ModelCard
from common.protocol.outcheck import FailedInference, check_output
from common.protocol.prepared import (
    SET_ID,
    PreparedError,
    PreparedStore,
    SetInfo,
    bucket_length,
    plans_nbytes,
    pools_of,
)
from common.protocol.program import ClientInput
from common.protocol.public_tables import PublicTableError, load_public_table
from common.protocol.run import offline_phase, online_phase, plan_forward
from common.protocol.session import (
    PROTOCOL_VERSION,
    InvalidInput,
    card_for_output,
    check_start,
    resolve_output,
)
from common.transport import Meter
from common.transport.meter import Label
from common.transport.stream import (
    KEEPALIVE_MS,
    MAX_FRAME_BYTES,
    PeerError,
    StreamChannel,
    StreamReader,
)
from proto import comet_pb2 as pb
from proto import comet_pb2_grpc as pb_grpc

MAX_MESSAGE_BYTES = 4 << 20


class CometError(RuntimeError):
    """A session failed; `code` is the gRPC status code name when the server said why."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Connection:
    target: str
    tls_ca: Path | None = None
    insecure: bool = False
    server_name: str | None = None  # TLS name override (certificates for another name)

    def channel(self) -> grpc.Channel:
        opts = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", KEEPALIVE_MS),
        ]
        if self.tls_ca is not None:
            if self.server_name:
                opts.append(("grpc.ssl_target_name_override", self.server_name))
            creds = grpc.ssl_channel_credentials(root_certificates=Path(self.tls_ca).read_bytes())
            return grpc.secure_channel(self.target, creds, options=opts)
        host = self.target.rsplit(":", 1)[0].strip("[]")
        if not self.insecure and host not in ("localhost", "127.0.0.1", "::1"):
            raise CometError(
                f"refusing a plaintext channel to {self.target}: give --tls-ca, or --insecure "
                "(your text stays secret-shared either way, but the session is not "
                "authenticated)"
            )
        return grpc.insecure_channel(self.target, options=opts)


@dataclass
class Result:
    model: str
    card: ModelCard
    output_kind: str  # "logits" or "hidden"
    output: np.ndarray  # (B, labels) logits or (B, L, d) hidden states
    attention_mask: np.ndarray
    cost: dict[str, Any]
    labels: list[str] | None = None
    probabilities: np.ndarray | None = None
    pooled: np.ndarray | None = None
    wire: dict[str, int] = field(default_factory=dict)
    batches: list[dict[str, Any]] = field(default_factory=list)  # infer_many: per batch
    notes: list[str] = field(default_factory=list)  # e.g. where the offline phase ran inline

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "card_digest": self.card.digest(),
            "output_kind": self.output_kind,
            "output": self.output.tolist(),
            "cost": self.cost,
            "transport": self.wire,
        }
        if self.labels is not None and self.probabilities is not None:
            out["label"] = self.labels
            out["probabilities"] = self.probabilities.tolist()
        if self.pooled is not None:
            out["pooled"] = self.pooled.tolist()
        if self.batches:
            out["batches"] = self.batches
        if self.notes:
            out["notes"] = self.notes
        return out


def cost_report(meter: Meter) -> dict[str, Any]:
    """The client's view of the cost: per phase totals and per layer rows."""
    rep: dict[str, Any] = {}
    for phase in ("offline", "online"):
        rows = []
        for (ph, layer), c in meter.breakdown(by=("phase", "layer")).items():
            if ph != phase or (c.sent_bytes == 0 and c.recv_bytes == 0):
                continue
            rows.append(
                {
                    "name": layer,
                    "bytes_sent": c.sent_bytes,
                    "bytes_received": c.recv_bytes,
                    "rounds": c.rounds,
                    "seconds": round(c.seconds, 4),
                }
            )
        tot = meter.totals(phase=phase)
        rep[phase] = {
            "bytes_sent": tot.sent_bytes,
            "bytes_received": tot.recv_bytes,
            "rounds": tot.rounds,
            "seconds": round(tot.seconds, 4),
            "layers": rows,
        }
    setup = meter.totals(phase="setup")
    rep["setup"] = {
        "bytes_sent": setup.sent_bytes,
        "bytes_received": setup.recv_bytes,
        "rounds": setup.rounds,
        "seconds": round(setup.seconds, 4),
    }
    return rep


def preload_tokenizer_library() -> None:
    """Import the tokenizer classes before a session opens: the server gives a client
    --handshake-timeout between Hello and Start, and the import can take seconds (tens
    on a loaded machine)."""
    from transformers import PreTrainedTokenizerFast  # noqa: F401


def _checked_files(files: Sequence[pb.TokenizerFile]) -> dict[str, bytes]:
    out = {}
    for f in files:
        name = Path(f.name).name  # never a path from the server
        if name != f.name or name.startswith("."):
            raise CometError(f"server sent a tokenizer file with a bad name: {f.name!r}")
        out[name] = f.data
    return out


def _tokenizer(files: Sequence[pb.TokenizerFile]) -> Any:
    """The server's (public) tokenizer files as a transformers tokenizer (generation:
    chat templates, decoding). A `tokenizer.json` is loaded by the generic fast
    tokenizer (the same ids as AutoTokenizer's class, without the ~1.5 s import of
    every model's configuration); other files by AutoTokenizer."""
    from transformers import PreTrainedTokenizerFast

    checked = _checked_files(files)
    with tempfile.TemporaryDirectory(prefix="comet-tok-") as d:
        for name, data in checked.items():
            (Path(d) / name).write_bytes(data)
        if (Path(d) / "tokenizer.json").is_file():
            return PreTrainedTokenizerFast.from_pretrained(d, local_files_only=True)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(d, local_files_only=True)


def _as_encoder(tok: Any) -> EncoderTokenizer:
    if isinstance(tok, FastTokenizer | TransformersTokenizer):
        return tok
    return TransformersTokenizer(tok)


def tokenize(tokenizer: Any, texts: Sequence[str], card: ModelCard) -> ClientInput:
    """Tokenize locally, padded to the longest text; a text longer than the model takes
    is an error, not truncated."""
    rows = tokenize_each(tokenizer, texts, card)
    return pad_rows(rows, len(rows), max(map(len, rows)), tokenizer)


def check_welcome(first: pb.ServerMessage, allow_insecure_dealer: bool) -> pb.Welcome:
    """The server's first message must be a Welcome of this protocol version whose
    offline phase is HE — the insecure dealer only when the user allowed it (tests)."""
    if first.WhichOneof("kind") != "welcome":
        raise CometError("protocol error: the server did not start with a welcome")
    w = first.welcome
    if w.protocol_version != PROTOCOL_VERSION:
        raise CometError(
            f"protocol version mismatch: the server speaks {w.protocol_version}, "
            f"this client {PROTOCOL_VERSION}"
        )
    if w.provider != "he" and not allow_insecure_dealer:
        raise CometError(
            f"the server uses the {w.provider!r} offline phase, which is NOT secure; "
            "refusing (pass --allow-insecure-dealer for tests)"
        )

    return w


class _Outbox:
    """The client's sending end of one `Session` stream: a bounded outbox that gRPC
    drains (`requests`), and a `send` that keeps this client's reader accepting while
    the server does not read (see `Inbox`: no deadlock)."""

    def __init__(self, conn: Connection) -> None:
        self.channel = conn.channel()
        self.outbox: queue.Queue = queue.Queue(maxsize=32)
        self.closed = threading.Event()
        self.relax: list = []  # the inbox, once it exists
        self.reader: StreamReader | None = None

    def requests(self):
        while True:
            item = self.outbox.get()
            if item is None:
                return
            yield item

    def send(self, msg: pb.ClientMessage) -> None:
        try:
            while not self.closed.is_set():
                try:
                    self.outbox.put(msg, timeout=0.25)
                    return
                except queue.Full:
                    reader = self.reader
                    if reader is not None and not reader.thread.is_alive():
                        # The server's stream has ended: nobody will take this message.
                        items = list(reader.inbox._items)
                        err = next((x for x in reversed(items) if isinstance(x, PeerError)), None)
                        raise (err or PeerError("the server closed the session")) from None
                    # Blocked on a server that does not read: it is sending to us, so
                    # our reader must keep accepting until this send goes through.
                    for inbox in self.relax:
                        inbox.set_relaxed(True)
        finally:
            for inbox in self.relax:
                inbox.set_relaxed(False)
        raise PeerError("the session is closed")

    def close(self) -> None:
        self.closed.set()
        with contextlib.suppress(queue.Full):
            self.outbox.put_nowait(None)
        self.channel.close()


class _Stream(_Outbox):
    """One open `Session` stream, from Hello to the server's Welcome (checked)."""

    def __init__(self, conn: Connection, model: str, allow_insecure_dealer: bool) -> None:
        super().__init__(conn)
        try:
            self._open(model, allow_insecure_dealer)
        except BaseException:
            self.close()
            raise

    def _next(self) -> pb.ServerMessage:
        try:
            return next(self.responses)
        except grpc.RpcError as e:
            raise CometError(_describe(e), e.code().name) from None
        except StopIteration:
            raise CometError("the server closed the session unexpectedly") from None

    def _open(self, model: str, allow_insecure_dealer: bool) -> None:
        stub = pb_grpc.CometStub(self.channel)
        self.send(pb.ClientMessage(hello=pb.Hello(protocol_version=PROTOCOL_VERSION, model=model)))
        self.responses = stub.Session(self.requests())
        first = self._next()
        w = check_welcome(first, allow_insecure_dealer)
        try:
            if json.loads(w.card_json).get("kind") == "decoder":
                raise CometError(
                    f"model {w.model!r} is a decoder: it generates text (use `comet-client "
                    "generate`)",
                    "FAILED_PRECONDITION",
                )
            card = ModelCard.from_json(w.card_json)
        except CometError:
            raise
        except Exception as e:  # any parse error: the server sent something unusable
            raise CometError(f"the server sent a malformed model card: {e}") from None
        if card.digest() != w.card_digest:
            raise CometError("the model card does not match its digest")
        self.welcome = w
        self.card = card

    def tokenizer(self) -> EncoderTokenizer:
        """The server's tokenizer for token ids (no transformers import when the files
        hold a `tokenizer.json`: see `comet_client.tokenizer`)."""
        try:
            return encoder_tokenizer(_checked_files(self.welcome.tokenizer))
        except CometError:
            raise
        except Exception as e:
            raise CometError(f"the server sent an unusable tokenizer: {e}") from None

    def start(self, start: pb.Start) -> pb.PreparedAnswer | None:
        """Send Start; with a prepared id or prepare, return the server's answer."""
        self.send(pb.ClientMessage(start=start))
        return self.start_answer(start)

    def start_answer(self, start: pb.Start) -> pb.PreparedAnswer | None:
        """The server's answer to a Start naming a prepared set or asking to prepare."""
        if not (start.prepared_id or start.prepare):
            return None
        msg = self._next()
        if msg.WhichOneof("kind") != "prepared":
            raise CometError("protocol error: the server did not answer the prepared set")
        return msg.prepared

    def protocol_channel(self, progress: Meter, timeout: float) -> StreamChannel:
        def frame_of(msg: pb.ServerMessage) -> Any:
            k = msg.WhichOneof("kind")
            return getattr(msg, k) if k else None

        self.reader = StreamReader(self.responses, frame_of)
        self.relax.append(self.reader.inbox)
        w = self.welcome
        return StreamChannel(
            CLIENT,
            self.reader.inbox,
            lambda f: self.send(pb.ClientMessage(frame=f)),
            meter=progress,
            timeout=timeout,
            # Never more than this client's own limit, whatever the server announces.
            max_frame_bytes=min(w.max_frame_bytes or MAX_FRAME_BYTES, MAX_FRAME_BYTES),
        )

    def goodbye(self) -> None:
        self.send(pb.ClientMessage(goodbye=pb.Goodbye()))
        self.outbox.put(None)
        # Let the server read the Goodbye and close with OK before the channel goes.
        if self.reader is not None:
            self.reader.thread.join(timeout=10)


def _with_table(card: ModelCard, inp: ClientInput) -> ClientInput:
    if not card.embedding_source:
        return inp
    # The server's word table is a public one: look rows up in our own copy, after
    # checking it is the same table (before any work starts).
    try:
        table = load_public_table(card.embedding_source, card.embedding_digest)
    except PublicTableError as e:
        raise CometError(str(e)) from None
    return dataclasses.replace(inp, embedding_table=table)


def _run_batch(
    st: _Stream,
    kind: str,
    inp: ClientInput,
    timeout: float,
    progress: Callable[[str, str], None] | None,
    prepared: Any = None,
    notes: list[str] | None = None,
    hide_lengths: bool = False,
) -> tuple[np.ndarray, dict[str, Any], dict[str, int], str | None]:
    """One batch on an open stream: (output, cost, wire, id of the prepared set used).

    `prepared`: (store, SetInfo) of a client-side set that fits `inp`'s shape — it is
    claimed (consumed) before Start names it; if the server cannot use its half, the
    offline phase runs inline (and `notes` says why).
    """
    card = st.card
    w = st.welcome
    B, L = inp.token_ids.shape
    check_start(card, B, L, inp.attention_mask, w.max_batch)
    run_card = card_for_output(card, kind)
    # With hidden lengths the server gets an all-ones mask: only the padded shape.
    sent_mask = np.ones_like(inp.attention_mask) if hide_lengths else inp.attention_mask
    arrays = None
    set_id = ""
    if prepared is not None:
        store, info = prepared
        try:
            info.check(card.digest(), None, B, L)
            _, arrays = store.claim(info.id)  # consumed from here on, whatever happens
            set_id = info.id
        except PreparedError as e:
            if notes is not None:
                notes.append(f"{e}; running the offline phase inline")
    start = pb.Start(
        batch=B,
        seq_len=L,
        attention_mask=sent_mask.astype(np.uint8).tobytes(),
        output=kind,
        prepared_id=set_id,
        hide_lengths=hide_lengths,
    )
    # Start goes out before this side plans, so that the two parties' planning runs
    # (a zero run of the program each, about a second for the default model) overlap.
    st.send(pb.ClientMessage(start=start))
    planned = plan_forward(
        CLIENT, run_card, (B, L), inp.attention_mask, None, inp, hide_lengths=hide_lengths
    )
    pools = None
    if arrays is not None:
        try:
            info.check(card.digest(), planned.digest(), B, L)
            pools = pools_of(planned.segments(), arrays)
        except PreparedError as e:
            # Already consumed and named to the server: this session cannot fall back.
            raise CometError(
                f"{e}; the set has been discarded (it was already named to the server); "
                "run again (without a fitting set the offline phase runs inline)"
            ) from None
    answer = st.start_answer(start)
    if answer is not None and not answer.accepted:
        if notes is not None:
            notes.append(
                f"the server cannot use prepared set {set_id[:8]}: {answer.reason}; "
                "running the offline phase inline"
            )
        pools, set_id = None, ""
    meter = _ProgressMeter(progress)
    ch = st.protocol_channel(meter, timeout)
    try:
        if pools is None:
            pools = offline_phase(ch, planned, make_provider(w.provider))
        res = online_phase(ch, planned, pools)
    except PeerError as e:
        raise CometError(f"the server ended the session: {e}", _code(e)) from None
    st.goodbye()
    assert res.output is not None
    out = np.asarray(res.output)
    try:
        check_output(card, kind, out, inp.attention_mask)
    except FailedInference as e:
        raise CometError(f"failed inference: {e}", "FAILED_INFERENCE") from None
    wire = {
        "frame_bytes_sent": ch.wire_sent,
        "frame_bytes_received": ch.wire_received,
        "payload_bytes_sent": ch.payload_sent,
        "payload_bytes_received": ch.payload_received,
    }
    return out, cost_report(meter), wire, set_id or None


def _finish(result: Result) -> Result:
    out, card = result.output, result.card
    if result.output_kind == "logits":
        z = out - out.max(axis=-1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
        names = list(card.arch.labels) or [str(i) for i in range(out.shape[-1])]
        result.probabilities = p
        result.labels = [names[i] for i in p.argmax(-1)]
    else:
        m = result.attention_mask[..., None].astype(np.float64)
        result.pooled = (out * m).sum(axis=1) / m.sum(axis=1)
    return result


def infer(
    conn: Connection,
    texts: Sequence[str],
    model: str = "",
    output: str = "auto",
    allow_insecure_dealer: bool = False,
    timeout: float = 600.0,
    progress: Callable[[str, str], None] | None = None,
) -> Result:
    """Run one private inference of one batch (at most the server's batch limit; see
    `infer_many` for any number); raises `CometError` / `InvalidInput` on failure.

    `progress(phase, layer)` is called whenever the protocol enters a new layer.
    """

    st = _Stream(conn, model, allow_insecure_dealer)
    try:
        card = st.card
        kind = resolve_output(card, output)
        inp = _with_table(card, tokenize(st.tokenizer(), texts, card))
        out, cost, wire, _ = _run_batch(st, kind, inp, timeout, progress)
        result = Result(st.welcome.model, card, kind, out, inp.attention_mask, cost)
        result.wire = wire
        return _finish(result)
    finally:
        st.close()


def _code(e: Exception) -> str | None:
    code = getattr(e, "code", None)
    return getattr(code, "name", None)


def _describe(e: grpc.RpcError) -> str:
    code = e.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"cannot reach the server: {e.details()}"
    return e.details() or code.name


class _ProgressMeter(Meter):
    """A meter that reports each new (phase, layer) the protocol enters."""

    def __init__(self, progress: Callable[[str, str], None] | None) -> None:
        super().__init__()
        self._progress = progress
        self._last: tuple[str, str] | None = None

    def enter(self, label: Label) -> None:
        super().enter(label)
        key = (label.phase, label.layer)
        if key != self._last:
            self._last = key
            if self._progress and label.layer not in ("-", ""):
                self._progress(label.phase, label.layer)


# -- any number of texts, prepared sets ----------------------------------------------------


def tokenize_each(
    tokenizer: Any, texts: Sequence[str], card: ModelCard, truncate: bool = False
) -> list[list[int]]:
    """Each text's token ids (no padding). A text longer than the model takes is an
    error naming it, unless `truncate` (then it is cut to the limit)."""
    if not texts:
        raise InvalidInput("empty input: give at least one text")
    for i, t in enumerate(texts):
        if not t.strip():
            raise InvalidInput(f"empty input: text #{i + 1} is empty")
    limit = card.arch.max_positions - card.arch.position_offset
    rows = _as_encoder(tokenizer).encode(texts, limit if truncate else None)
    for i, r in enumerate(rows):
        if len(r) > limit:
            t = texts[i]
            short = t if len(t) <= 40 else t[:37] + "..."
            raise InvalidInput(
                f"text too long for model {card.name!r}: text #{i + 1} ({short!r}) is "
                f"{len(r)} tokens, the model takes at most {limit} (shorten it, or pass "
                "--truncate)"
            )
    return rows


def pad_rows(rows: Sequence[list[int]], batch: int, length: int, tokenizer: Any) -> ClientInput:
    """A (batch, length) input: `rows` padded to `length` (the tokenizer's pad token
    and side), then filler rows (the empty text's special tokens) up to `batch`. The
    mask is public: it shows each row's token count, filler rows included."""
    tok = _as_encoder(tokenizer)
    filler = tok.encode([""])[0] or tok.encode(["x"])[0][:1]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    left = tok.padding_side == "left"
    ids = np.full((batch, length), pad, dtype=np.int64)
    mask = np.zeros((batch, length), dtype=np.int64)
    for b in range(batch):
        r = rows[b] if b < len(rows) else filler
        n = len(r)
        sl = slice(length - n, length) if left else slice(0, n)
        ids[b, sl] = r
        mask[b, sl] = 1
    return ClientInput(ids, mask)


@dataclass
class Chunk:
    texts: list[int]  # input indices, in this batch's row order
    batch: int
    length: int
    prepared: SetInfo | None = None


def plan_chunks(
    lengths: Sequence[int],
    max_batch: int,
    limit: int,
    sets: Sequence[SetInfo] = (),
    buckets: tuple[int, ...] = (),
    max_tokens: int = 0,
) -> list[Chunk]:
    """Split texts (their token counts) into batches of at most `max_batch`, similar
    lengths together (shortest first). A batch takes a prepared set when one fits
    (batch ≥ its texts, length ≥ its longest), preferring the set that covers the most
    texts, then the smallest; else its length is the smallest bucket that holds it
    (within `max_tokens` when announced) and its offline phase runs inline."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    free = sorted(
        (s for s in sets
         if s.batch <= max_batch and s.seq_len <= limit
         and not (max_tokens and s.batch * s.seq_len > max_tokens)),
        key=lambda s: (s.batch * s.seq_len, s.created),
    )  # fmt: skip
    out: list[Chunk] = []
    pos = 0
    while pos < len(order):
        best: tuple[int, int, SetInfo] | None = None
        for s in free:
            n = min(s.batch, len(order) - pos)
            if max(lengths[i] for i in order[pos : pos + n]) <= s.seq_len:
                key = (n, -s.batch * s.seq_len)
                if best is None or key > best[:2]:
                    best = (*key, s)
        if best is not None:
            s = best[2]
            free.remove(s)
            idx = order[pos : pos + best[0]]
            out.append(Chunk(idx, s.batch, s.seq_len, s))
        else:
            idx = order[pos : pos + max_batch]
            n_real = max(lengths[i] for i in idx)
            length = bucket_length(n_real, limit, buckets)
            if max_tokens and len(idx) * length > max_tokens:
                length = n_real
            out.append(Chunk(idx, len(idx), length))
        pos += len(out[-1].texts)
    return out


def _sum_costs(costs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    keys = ("bytes_sent", "bytes_received", "rounds", "seconds")
    total: dict[str, Any] = {}
    for phase in ("offline", "online", "setup"):
        p: dict[str, Any] = {k: sum(c[phase][k] for c in costs) for k in keys}
        p["seconds"] = round(p["seconds"], 4)
        if phase != "setup":
            rows: dict[str, dict[str, Any]] = {}
            for c in costs:
                for r in c[phase]["layers"]:
                    acc = rows.setdefault(r["name"], {"name": r["name"], **dict.fromkeys(keys, 0)})
                    for k in keys:
                        acc[k] += r[k]
            for r in rows.values():
                r["seconds"] = round(r["seconds"], 4)
            p["layers"] = list(rows.values())
        total[phase] = p
    return total


def _owner(st: _Stream, conn: Connection) -> str:
    """Whose sets: the server's store id (its address where it announces none)."""
    return st.welcome.prepared_store or conn.target


def usable_sets(
    store: PreparedStore | None, target: str, st: _Stream, kind: str, hide_lengths: bool = False
) -> list[SetInfo]:
    if store is None:
        return []
    w, digest = st.welcome, st.card.digest()
    return [
        s
        for s in store.list()
        if s.owner == target
        and s.model == w.model
        and s.card_digest == digest
        and s.output == kind
        and s.provider == w.provider
        and s.hide_lengths == hide_lengths
    ]


def infer_many(
    conn: Connection,
    texts: Sequence[str],
    model: str = "",
    output: str = "auto",
    allow_insecure_dealer: bool = False,
    timeout: float = 600.0,
    progress: Callable[[int, int, str, str], None] | None = None,
    store: PreparedStore | None = None,
    buckets: tuple[int, ...] = (),
    truncate: bool = False,
    hide_lengths: bool = False,
) -> Result:
    """Any number of texts: batches of at most the server's limit (one session each;
    see `plan_chunks`), each using a fitting prepared set from `store` if there is one.
    Results come back in input order; the cost is summed (`Result.cost`) and per batch
    (`Result.batches`); `Result.notes` says where a batch ran its offline phase inline.

    `progress(batch, batches, phase, layer)` is called whenever a batch's protocol
    enters a new layer.
    """

    st: _Stream | None = _Stream(conn, model, allow_insecure_dealer)
    assert st is not None
    try:
        card, w = st.card, st.welcome
        kind = resolve_output(card, output)
        tok = st.tokenizer()
        rows = tokenize_each(tok, texts, card, truncate)
        limit = card.arch.max_positions - card.arch.position_offset
        lengths = [len(r) for r in rows]
        sets = usable_sets(store, _owner(st, conn), st, kind, hide_lengths)
        # A batch with no fitting set runs at its own length, the cheapest offline phase:
        # its token counts are public anyway. Only with hide_lengths does it pad to a
        # bucket (the server then learns just the bucket).
        inline_buckets = buckets if hide_lengths else ()
        chunks = plan_chunks(lengths, w.max_batch, limit, sets, inline_buckets, w.max_tokens)
        n, L_all = len(texts), max(lengths)
        left = getattr(tok, "padding_side", "right") == "left"
        mask_all = np.zeros((n, L_all), dtype=np.int64)
        outs: list[np.ndarray | None] = [None] * n
        batches: list[dict[str, Any]] = []
        notes: list[str] = []
        costs, wires = [], []
        for bi, ch in enumerate(chunks):
            if st is None:
                st = _Stream(conn, model, allow_insecure_dealer)
                if st.card.digest() != card.digest():
                    raise CometError("the server's model changed between batches")
            inp = _with_table(card, pad_rows([rows[i] for i in ch.texts], ch.batch, ch.length, tok))
            prog = (lambda ph, la, bi=bi: progress(bi, len(chunks), ph, la)) if progress else None
            prepared = (store, ch.prepared) if ch.prepared is not None and store else None
            before = len(notes)
            out, cost, wire, used = _run_batch(
                st, kind, inp, timeout, prog, prepared, notes, hide_lengths
            )
            if store is not None and used is None and before == len(notes):
                notes.append(
                    f"batch {bi + 1}: no prepared set fits {ch.batch} × {ch.length}; "
                    "the offline phase ran inline (see `comet-client prepare`)"
                )
            st.close()
            st = None
            costs.append(cost)
            wires.append(wire)
            batches.append(
                {"texts": ch.texts, "batch": ch.batch, "seq_len": ch.length,
                 "prepared": used, "cost": cost}
            )  # fmt: skip
            for row, i in enumerate(ch.texts):
                k = lengths[i]
                if kind == "logits":
                    outs[i] = out[row]
                else:
                    src = out[row, ch.length - k :] if left else out[row, :k]
                    h = np.zeros((L_all, out.shape[-1]))
                    if left:
                        h[L_all - k :] = src
                    else:
                        h[:k] = src
                    outs[i] = h
                if left:
                    mask_all[i, L_all - k :] = 1
                else:
                    mask_all[i, :k] = 1
        result = Result(w.model, card, kind, np.stack(outs), mask_all, _sum_costs(costs))
        result.wire = {k: sum(x[k] for x in wires) for k in wires[0]}
        result.batches = batches
        result.notes = notes
        return _finish(result)
    finally:
        if st is not None:
            st.close()


def prepare(
    conn: Connection,
    store: PreparedStore,
    batch: int,
    length: int,
    count: int = 1,
    model: str = "",
    output: str = "auto",
    allow_insecure_dealer: bool = False,
    timeout: float = 600.0,
    progress: Callable[[int, str, str], None] | None = None,
    hide_lengths: bool = False,
) -> list[SetInfo]:
    """Run `count` offline phases for batch × length now (one session each); both
    parties store their halves. Returns the client's sets."""
    made = []
    for i in range(count):
        st = _Stream(conn, model, allow_insecure_dealer)
        try:
            card, w = st.card, st.welcome
            kind = resolve_output(card, output)
            if not w.keeps_prepared:
                raise CometError("this server keeps no prepared sets (see --prepared-dir)")
            a = card.arch
            limit = a.max_positions - a.position_offset
            if length > limit:
                raise InvalidInput(f"--length {length} exceeds what the model takes ({limit})")
            mask = np.ones((batch, length), dtype=np.int64)
            check_start(card, batch, length, mask, w.max_batch)
            # Planning needs no text: zeros (and a zero table for public embeddings).
            table = np.zeros((a.vocab_size, a.hidden)) if card.embedding_source else None
            dummy = ClientInput(np.zeros((batch, length), np.int64), mask, table)
            run_card = card_for_output(card, kind)
            planned = plan_forward(
                CLIENT, run_card, (batch, length), mask, None, dummy, hide_lengths=hide_lengths
            )
            nbytes = plans_nbytes(planned.segments(), CLIENT)
            token = store.reserve(nbytes, w.model, _owner(st, conn))
            try:
                answer = st.start(
                    pb.Start(
                        batch=batch,
                        seq_len=length,
                        attention_mask=mask.astype(np.uint8).tobytes(),
                        output=kind,
                        prepare=True,
                        hide_lengths=hide_lengths,
                    )
                )
                assert answer is not None
                if not answer.accepted:
                    raise CometError(f"the server refused to prepare: {answer.reason}")
                if not SET_ID.match(answer.id):
                    raise CometError("protocol error: the server named a malformed set id")
                prog = (lambda ph, la, i=i: progress(i, ph, la)) if progress else None
                ch = st.protocol_channel(_ProgressMeter(prog), timeout)
                try:
                    pools = offline_phase(ch, planned, make_provider(w.provider))
                except PeerError as e:
                    raise CometError(f"the server ended the session: {e}", _code(e)) from None
                now = time.time()
                info = SetInfo(
                    id=answer.id, model=w.model, card_digest=card.digest(),
                    plan_digest=planned.digest(), batch=batch, seq_len=length, output=kind,
                    provider=w.provider, party=CLIENT, created=now, nbytes=nbytes,
                    segments=tuple(planned.segments()), owner=_owner(st, conn),
                    server=conn.target,
                    expires=now + answer.expires_in if answer.expires_in else 0.0,
                    hide_lengths=hide_lengths,
                )  # fmt: skip
                store.save(info, pools, token)
            finally:
                store.release(token)
            st.goodbye()
            made.append(info)
        finally:
            st.close()
    return made
