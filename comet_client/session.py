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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from common.mpc.preprocessing import make_provider
from common.mpc.roles import CLIENT
from common.protocol.card import ModelCard
from common.protocol.outcheck import FailedInference, check_output
from common.protocol.program import ClientInput
from common.protocol.public_tables import PublicTableError, load_public_table
from common.protocol.run import private_forward
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


def _tokenizer(files: Sequence[pb.TokenizerFile]) -> Any:
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="comet-tok-") as d:
        for f in files:
            name = Path(f.name).name  # never a path from the server
            if name != f.name or name.startswith("."):
                raise CometError(f"server sent a tokenizer file with a bad name: {f.name!r}")
            (Path(d) / name).write_bytes(f.data)
        return AutoTokenizer.from_pretrained(d, local_files_only=True)


def tokenize(tokenizer: Any, texts: Sequence[str], card: ModelCard) -> ClientInput:
    """Tokenize locally; a text longer than the model takes is an error, not truncated."""
    if not texts:
        raise InvalidInput("empty input: give at least one text")
    for i, t in enumerate(texts):
        if not t.strip():
            raise InvalidInput(f"empty input: text #{i + 1} is empty")
    limit = card.arch.max_positions - card.arch.position_offset
    enc = tokenizer(list(texts), padding=True, truncation=False, return_tensors="np")
    ids = enc["input_ids"].astype(np.int64)
    lengths = enc["attention_mask"].sum(axis=1)
    if ids.shape[1] > limit:
        i = int(lengths.argmax())
        raise InvalidInput(
            f"text too long for model {card.name!r}: text #{i + 1} is {int(lengths[i])} "
            f"tokens, the model takes at most {limit}"
        )
    return ClientInput(ids, enc["attention_mask"].astype(np.int64))


def infer(
    conn: Connection,
    texts: Sequence[str],
    model: str = "",
    output: str = "auto",
    allow_insecure_dealer: bool = False,
    timeout: float = 600.0,
    progress: Callable[[str, str], None] | None = None,
) -> Result:
    """Run one private inference; raises `CometError` / `InvalidInput` on failure.

    `progress(phase, layer)` is called whenever the protocol enters a new layer.
    """
    # Import the tokenizer library before the session opens: the server gives a client
    # --handshake-timeout between Hello and Start, and this import alone can take tens
    # of seconds on a loaded machine.
    import transformers  # noqa: F401

    channel = conn.channel()
    outbox: queue.Queue = queue.Queue(maxsize=32)
    closed = threading.Event()

    def requests():
        while True:
            item = outbox.get()
            if item is None:
                return
            yield item

    relax: list = []  # the inbox, once it exists (see `Inbox`: no deadlock with the server)

    def send(msg: pb.ClientMessage) -> None:
        try:
            while not closed.is_set():
                try:
                    outbox.put(msg, timeout=0.25)
                    return
                except queue.Full:
                    # Blocked on a server that does not read: it is sending to us, so
                    # our reader must keep accepting until this send goes through.
                    for inbox in relax:
                        inbox.set_relaxed(True)
        finally:
            for inbox in relax:
                inbox.set_relaxed(False)
        raise PeerError("the session is closed")

    stub = pb_grpc.CometStub(channel)
    send(pb.ClientMessage(hello=pb.Hello(protocol_version=PROTOCOL_VERSION, model=model)))
    responses = stub.Session(requests())
    try:
        try:
            first = next(responses)
        except grpc.RpcError as e:
            raise CometError(_describe(e), e.code().name) from None
        except StopIteration:
            raise CometError("the server closed the session without a welcome") from None
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
        kind = resolve_output(card, output)
        try:
            tokenizer = _tokenizer(w.tokenizer)
        except CometError:
            raise
        except Exception as e:
            raise CometError(f"the server sent an unusable tokenizer: {e}") from None
        inp = tokenize(tokenizer, texts, card)
        if card.embedding_source:
            # The server's word table is a public one: look rows up in our own copy,
            # after checking it is the same table (before any work starts).
            try:
                table = load_public_table(card.embedding_source, card.embedding_digest)
            except PublicTableError as e:
                raise CometError(str(e)) from None
            inp = dataclasses.replace(inp, embedding_table=table)
        B, L = inp.token_ids.shape
        check_start(card, B, L, inp.attention_mask, w.max_batch)
        send(
            pb.ClientMessage(
                start=pb.Start(
                    batch=B,
                    seq_len=L,
                    attention_mask=inp.attention_mask.astype(np.uint8).tobytes(),
                    output=kind,
                )
            )
        )

        def frame_of(msg: pb.ServerMessage) -> Any:
            k = msg.WhichOneof("kind")
            return getattr(msg, k) if k else None

        reader = StreamReader(responses, frame_of)
        relax.append(reader.inbox)
        meter = _ProgressMeter(progress)
        ch = StreamChannel(
            CLIENT,
            reader.inbox,
            lambda f: send(pb.ClientMessage(frame=f)),
            meter=meter,
            timeout=timeout,
            # Never more than this client's own limit, whatever the server announces.
            max_frame_bytes=min(w.max_frame_bytes or MAX_FRAME_BYTES, MAX_FRAME_BYTES),
        )
        try:
            res = private_forward(
                ch,
                card_for_output(card, kind),
                (B, L),
                inp.attention_mask,
                None,
                inp,
                make_provider(w.provider),
            )
        except PeerError as e:
            raise CometError(f"the server ended the session: {e}", _code(e)) from None
        send(pb.ClientMessage(goodbye=pb.Goodbye()))
        outbox.put(None)
        # Let the server read the Goodbye and close with OK before the channel goes.
        reader.thread.join(timeout=10)
        assert res.output is not None
        out = np.asarray(res.output)
        try:
            check_output(card, kind, out, inp.attention_mask)
        except FailedInference as e:
            raise CometError(f"failed inference: {e}", "FAILED_INFERENCE") from None
        result = Result(w.model, card, kind, out, inp.attention_mask, cost_report(meter))
        result.wire = {
            "frame_bytes_sent": ch.wire_sent,
            "frame_bytes_received": ch.wire_received,
            "payload_bytes_sent": ch.payload_sent,
            "payload_bytes_received": ch.payload_received,
        }
        if kind == "logits":
            z = out - out.max(axis=-1, keepdims=True)
            p = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
            names = list(card.arch.labels) or [str(i) for i in range(out.shape[-1])]
            result.probabilities = p
            result.labels = [names[i] for i in p.argmax(-1)]
        else:
            m = inp.attention_mask[..., None].astype(np.float64)
            result.pooled = (out * m).sum(axis=1) / m.sum(axis=1)
        return result
    finally:
        closed.set()
        with contextlib.suppress(queue.Full):
            outbox.put_nowait(None)
        channel.close()


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
