"""The `Channel`: the only path by which the two parties exchange bytes.

Every message is a frame ``(seq, tag, clock, payload)``:

* ``seq`` counts messages per direction and ``tag`` is chosen by the protocol code; the
  receiver states which tag it expects, so two parties running different programs fail
  fast with `ProtocolMismatch` instead of silently misreading bytes.
* ``clock`` is a Lamport clock of communication rounds: the receiver advances its clock
  to ``max(own, sender's + 1)``. A party's clock is the length of the longest chain of
  messages it has waited on, so ``max`` of both clocks is the protocol's round count
  (a one-way message is one round; a simultaneous exchange is one round).
  ``scope_clock`` is the same clock restarted at 0 in every `scope`, so the rounds of
  one op are its own depth, not the catch-up from earlier one-way messages; on scope
  exit the enclosing clock advances by the child's depth. A label's `rounds` is the
  sum of its scopes' own increments (max over the two parties per op; summed over ops
  it is the sequential round count). Both parties must open the same scopes around
  communication, which symmetric protocol code does by construction.
* ``payload`` bytes are what the meter counts, on both sides, under the current label.
* ``kind``, ``shape``, ``dtype`` type the payload ("ring" tensors of uint64 shares,
  other "array"s, HE "ciphertexts" batches, or opaque "bytes"); the receiver of an array
  checks them against the shape and dtype its program expects. ``label`` is the
  sender's phase/layer/op, so a trace or an error names where in the model it was.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from common.transport.meter import Label, Meter


class TransportError(RuntimeError):
    """Base class of transport failures."""


class ChannelClosed(TransportError):
    """The peer went away or did not answer within the timeout."""


class ProtocolMismatch(TransportError):
    """The peer sent a message other than the one this party's program expects."""


@dataclass(frozen=True)
class Frame:
    seq: int
    tag: str
    clock: int
    payload: bytes
    scope_clock: int = 0
    kind: str = "bytes"  # "ring" | "array" | "ciphertexts" | "he-keys" | "bytes"
    shape: tuple[int, ...] = ()
    dtype: str = ""
    label: str = ""  # "phase/layer/op" of the sender


class Channel(ABC):
    """One party's end of a two-party, ordered, reliable message channel.

    Subclasses implement `_put` and `_get` (move one frame); framing, tag checks,
    metering and round counting live here so that every transport behaves alike.
    """

    def __init__(self, party: int, meter: Meter | None = None, timeout: float = 600.0) -> None:
        if party not in (0, 1):
            raise ValueError(f"party must be 0 or 1, got {party}")
        self.party = party
        self.meter = meter if meter is not None else Meter()
        self.timeout = timeout
        self._send_seq = 0
        self._recv_seq = 0
        self.clock = 0  # global Lamport clock
        self.scope_clock = 0  # clock of the innermost scope
        self._scope_stack: list[int] = []

    # -- subclass interface -------------------------------------------------------
    @abstractmethod
    def _put(self, frame: Frame) -> None: ...

    @abstractmethod
    def _get(self, timeout: float, limit: int | None = None) -> Frame:
        """The next frame; a transport that reassembles may refuse one above `limit`."""

    def close(self) -> None:  # noqa: B027 - optional for subclasses
        """Release transport resources; the default does nothing."""

    # -- labels ---------------------------------------------------------------------
    @contextlib.contextmanager
    def scope(
        self, phase: str | None = None, layer: str | None = None, op: str | None = None
    ) -> Iterator[Label]:
        """Attribute traffic and time inside the block to a label.

        Fields left as None inherit from the enclosing label.
        """
        cur = self.meter.current
        label = replace(
            cur,
            **{k: v for k, v in (("phase", phase), ("layer", layer), ("op", op)) if v is not None},
        )
        self.meter.enter(label)
        self._scope_stack.append(self.scope_clock)
        self.scope_clock = 0
        try:
            yield label
        finally:
            depth = self.scope_clock
            self.scope_clock = self._scope_stack.pop() + depth
            self.meter.exit()

    # -- bytes ------------------------------------------------------------------------
    def send(
        self,
        tag: str,
        payload: bytes,
        kind: str = "bytes",
        shape: tuple[int, ...] = (),
        dtype: str = "",
    ) -> None:
        """Send one message. Cost: len(payload) bytes, no waiting."""
        cur = self.meter.current
        frame = Frame(
            self._send_seq, tag, self.clock, bytes(payload), self.scope_clock,
            kind, tuple(int(d) for d in shape), dtype, f"{cur.phase}/{cur.layer}/{cur.op}",
        )  # fmt: skip
        self._send_seq += 1
        self._put(frame)
        self.meter.record_send(len(frame.payload), _ciphertexts(frame))

    def recv_frame(
        self, tag: str, nbytes: int | None = None, max_bytes: int | None = None
    ) -> Frame:
        """Receive the next frame, which must carry `tag` (and exactly `nbytes`, or at
        most `max_bytes`, if given: a reassembling transport refuses it at the first
        chunk past that size)."""
        frame = self._get(self.timeout, nbytes if nbytes is not None else max_bytes)
        if frame.seq != self._recv_seq or frame.tag != tag:
            raise ProtocolMismatch(
                f"party {self.party} expected message #{self._recv_seq} {tag!r}, "
                f"got #{frame.seq} {frame.tag!r}"
                + (f" (from {frame.label})" if frame.label else "")
            )
        if nbytes is not None and len(frame.payload) != nbytes:
            raise ProtocolMismatch(
                f"message {tag!r}: expected {nbytes} bytes, got {len(frame.payload)}"
            )
        if max_bytes is not None and len(frame.payload) > max_bytes:
            raise ProtocolMismatch(
                f"message {tag!r}: at most {max_bytes} bytes expected, got {len(frame.payload)}"
            )
        self._recv_seq += 1
        self.clock = max(self.clock, frame.clock + 1)
        new_scope = max(self.scope_clock, frame.scope_clock + 1)
        self.meter.record_recv(
            len(frame.payload), new_scope - self.scope_clock, _ciphertexts(frame)
        )
        self.scope_clock = new_scope
        return frame

    def recv(self, tag: str, nbytes: int | None = None, max_bytes: int | None = None) -> bytes:
        """Receive the next message's payload (see `recv_frame`)."""
        return self.recv_frame(tag, nbytes, max_bytes).payload

    # -- arrays -----------------------------------------------------------------------
    def send_array(self, tag: str, arr: np.ndarray) -> None:
        """Send a numeric array as raw little-endian bytes, typed with its shape and dtype.

        uint64 arrays are ring tensors (shares in Z_2^64); the shape is public.
        """
        a = np.ascontiguousarray(arr)
        kind = "ring" if a.dtype == np.uint64 else "array"
        self.send(tag, a.tobytes(), kind, a.shape, a.dtype.str)

    def recv_array(self, tag: str, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        """Receive an array of a known shape and dtype (size, and type when sent, checked)."""
        dt = np.dtype(dtype)
        shape = tuple(int(d) for d in shape)
        n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        frame = self.recv_frame(tag, n)
        if frame.dtype and (frame.shape != shape or frame.dtype != dt.str):
            raise ProtocolMismatch(
                f"message {tag!r}: expected a {dt.str} tensor of shape {shape}, got "
                f"{frame.dtype} {frame.shape}"
            )
        return np.frombuffer(frame.payload, dtype=dt).reshape(shape)

    def exchange_array(self, tag: str, arr: np.ndarray) -> np.ndarray:
        """Both parties send `arr` and receive the peer's array of the same shape: 1 round."""
        self.send_array(tag, arr)
        return self.recv_array(tag, arr.shape, arr.dtype)


def _ciphertexts(frame: Frame) -> int:
    """How many HE ciphertexts a frame carries (its shape says, for kind "ciphertexts")."""
    return int(frame.shape[0]) if frame.kind == "ciphertexts" and frame.shape else 0
