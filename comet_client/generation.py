"""One private generation against a comet-server, from the client's side.

`generate()` opens a `Session` stream, checks the server's protocol version and the
decoder's public card, tokenizes the prompt locally (with the tokenizer the server
published; `chat`: through its chat template), sends only the public prompt length and
token limit (`GenerateStart`), then runs the client's side of
`common.protocol.generate.generate_party`: the prompt and every generated token enter
through the private embedding, the KV cache stays secret-shared on both sides, each
step's logits are opened to this client only and the next token is sampled here.
The server receives shares, masked values and one continue/stop flag per token.

The stream plumbing mirrors `comet_client.session.infer` (kept separate so that the
classification path is unchanged).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from comet_client.session import (
    CometError,
    Connection,
    _code,
    _describe,
    _Outbox,
    _ProgressMeter,
    _tokenizer,
    check_welcome,
    preload_tokenizer_library,
)
from common.mpc.preprocessing import make_provider
from common.mpc.roles import CLIENT
from common.protocol.decoder_card import DecoderCard
from common.protocol.generate import GenerationResult, Sampling, StepCost, check_generate
from common.protocol.session import PROTOCOL_VERSION, InvalidInput
from common.transport import Meter
from common.transport.meter import Counts
from common.transport.stream import MAX_FRAME_BYTES, PeerError, StreamChannel, StreamReader
from proto import comet_pb2 as pb
from proto import comet_pb2_grpc as pb_grpc

DEFAULT_NEW_TOKENS = 32


@dataclass
class Generation:
    """The client's result: the prompt, the generated ids and text, and the cost."""

    model: str
    card: DecoderCard
    prompt: str
    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    cost: dict[str, Any]
    logits: list[np.ndarray] = field(default_factory=list)
    wire: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "card_digest": self.card.digest(),
            "prompt": self.prompt,
            "prompt_tokens": len(self.prompt_ids),
            "text": self.text,
            "token_ids": self.token_ids,
            "cost": self.cost,
            "transport": self.wire,
        }


def _counts(c: Counts) -> dict[str, Any]:
    return {
        "bytes_sent": c.sent_bytes,
        "bytes_received": c.recv_bytes,
        "rounds": c.rounds,
        "seconds": round(c.seconds, 4),
    }


def _step(c: StepCost) -> dict[str, Any]:
    return {
        "positions": c.positions,
        "context": c.context,
        "offline": _counts(c.offline),
        "online": _counts(c.online),
    }


def generation_cost(res: GenerationResult, meter: Meter) -> dict[str, Any]:
    """The client's view of the cost: setup, the prefill, every token step and their
    mean (offline and online bytes each way, rounds, seconds), and the totals."""
    steps = [_step(c) for c in res.costs if c.kind == "token"]
    prefill = next((_step(c) for c in res.costs if c.kind == "prefill"), None)
    mean: dict[str, Any] = {}
    if steps:
        for phase in ("offline", "online"):
            mean[phase] = {
                k: round(float(np.mean([s[phase][k] for s in steps])), 4)
                for k in ("bytes_sent", "bytes_received", "rounds", "seconds")
            }
    return {
        "setup": _counts(res.setup),
        "prefill": prefill,
        "tokens": steps,
        "per_token": mean,
        "total": {ph: _counts(meter.totals(phase=ph)) for ph in ("setup", "offline", "online")},
    }


def encode_prompt(tokenizer: Any, prompt: str, chat: bool) -> list[int]:
    """The prompt's token ids, locally: plain, or as one user turn of the tokenizer's
    chat template followed by the assistant's generation prompt."""
    if not prompt.strip():
        raise InvalidInput("empty prompt")
    if not chat:
        return [int(t) for t in tokenizer(prompt)["input_ids"]]
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidInput("this model's tokenizer has no chat template: drop --chat")
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
    )
    if not isinstance(ids, list):
        ids = ids["input_ids"]
    return [int(t) for t in ids]


class _Stream(_Outbox):
    """The client's end of one generation `Session` stream (its handshake is
    `generate`'s own)."""


def generate(
    conn: Connection,
    prompt: str,
    model: str = "",
    max_new_tokens: int | None = None,
    sampling: Sampling | None = None,
    chat: bool = False,
    allow_insecure_dealer: bool = False,
    timeout: float = 600.0,
    on_text: Callable[[str], None] | None = None,
    progress: Callable[[str, str], None] | None = None,
) -> Generation:
    """Generate up to `max_new_tokens` tokens privately after `prompt`; stops early at
    an end-of-sequence token of the card. None: `DEFAULT_NEW_TOKENS`, or less if the
    server's limit or the model's context is smaller (an explicit count above either is
    an error). `on_text(piece)` gets the decoded text of each
    token as soon as it is picked (streaming). Raises `CometError` / `InvalidInput`.

    Cost: one prefill of the prompt, then one step per token over the shared cache
    (each with its own offline phase); see docs/BENCHMARKS.md, "Generation".
    """
    preload_tokenizer_library()  # before the handshake timer starts

    stream = _Stream(conn)
    stream.send(pb.ClientMessage(hello=pb.Hello(protocol_version=PROTOCOL_VERSION, model=model)))
    responses = pb_grpc.CometStub(stream.channel).Session(stream.requests())
    try:
        try:
            first = next(responses)
        except grpc.RpcError as e:
            raise CometError(_describe(e), e.code().name) from None
        except StopIteration:
            raise CometError("the server closed the session without a welcome") from None
        w = check_welcome(first, allow_insecure_dealer)
        try:
            kind = json.loads(w.card_json).get("kind")
        except ValueError:
            raise CometError("the server sent a malformed model card") from None
        if kind != "decoder":
            raise CometError(
                f"model {w.model!r} is not a decoder: it cannot generate "
                "(use `comet-client classify`)",
                "FAILED_PRECONDITION",
            )
        try:
            card = DecoderCard.from_json(w.card_json)
        except Exception as e:  # any parse error: the server sent something unusable
            raise CometError(f"the server sent a malformed model card: {e}") from None
        if card.digest() != w.card_digest:
            raise CometError("the model card does not match its digest")
        try:
            tokenizer = _tokenizer(w.tokenizer)
        except CometError:
            raise
        except Exception as e:
            raise CometError(f"the server sent an unusable tokenizer: {e}") from None
        ids = encode_prompt(tokenizer, prompt, chat)
        if max_new_tokens is None:
            room = card.arch.max_context - len(ids) + 1
            max_new_tokens = max(1, min(DEFAULT_NEW_TOKENS, w.max_new_tokens or room, room))
        check_generate(card, len(ids), max_new_tokens, w.max_new_tokens or None)
        sampling = sampling or Sampling()
        stream.send(
            pb.ClientMessage(
                start=pb.Start(
                    generate=pb.GenerateStart(prompt_len=len(ids), max_new_tokens=max_new_tokens)
                )
            )
        )

        def frame_of(msg: pb.ServerMessage) -> Any:
            k = msg.WhichOneof("kind")
            return getattr(msg, k) if k else None

        reader = StreamReader(responses, frame_of)
        stream.reader = reader  # a send fails fast once the server's stream has ended
        stream.relax.append(reader.inbox)
        meter = _ProgressMeter(progress)
        ch = StreamChannel(
            CLIENT,
            reader.inbox,
            lambda f: stream.send(pb.ClientMessage(frame=f)),
            meter=meter,
            timeout=timeout,
            max_frame_bytes=min(w.max_frame_bytes or MAX_FRAME_BYTES, MAX_FRAME_BYTES),
        )
        generated: list[int] = []
        shown = [""]

        def on_token(tok: int) -> None:
            generated.append(tok)
            if on_text is not None:
                text = tokenizer.decode(generated, skip_special_tokens=True)
                # A token may end inside a multi-byte character: wait for the rest.
                if not text.endswith("\ufffd"):
                    on_text(text[len(shown[0]) :] if text.startswith(shown[0]) else text)
                    shown[0] = text

        from common.protocol.generate import generate_party

        try:
            res = generate_party(
                ch, card, make_provider(w.provider), len(ids), max_new_tokens,
                prompt_ids=ids, sampling=sampling, on_token=on_token,
            )  # fmt: skip
        except PeerError as e:
            raise CometError(f"the server ended the session: {e}", _code(e)) from None
        stream.send(pb.ClientMessage(goodbye=pb.Goodbye()))
        stream.outbox.put(None)
        reader.thread.join(timeout=10)
        text = tokenizer.decode(res.token_ids, skip_special_tokens=True)
        out = Generation(
            w.model, card, prompt, ids, res.token_ids, text, generation_cost(res, meter),
            res.logits,
        )  # fmt: skip
        out.wire = {
            "frame_bytes_sent": ch.wire_sent,
            "frame_bytes_received": ch.wire_received,
            "payload_bytes_sent": ch.payload_sent,
            "payload_bytes_received": ch.payload_received,
        }
        return out
    finally:
        stream.close()
