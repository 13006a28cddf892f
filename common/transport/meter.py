"""Byte, message, round and time accounting, keyed by (phase, layer, op).

The meter is owned by one party's `Channel`; it records what that party sends and
receives, as serialized payload bytes, and the rounds it waits for the peer.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, fields


@dataclass(frozen=True, order=True)
class Label:
    """Where a message belongs: phase ("offline"/"online"/"setup"), model layer, op kind."""

    phase: str = "setup"
    layer: str = "-"
    op: str = "-"


@dataclass
class Counts:
    """Accumulated traffic of one label (or of a sum of labels)."""

    sent_bytes: int = 0
    recv_bytes: int = 0
    sent_msgs: int = 0
    recv_msgs: int = 0
    rounds: int = 0
    seconds: float = 0.0

    def __iadd__(self, other: Counts) -> Counts:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    @property
    def total_bytes(self) -> int:
        return self.sent_bytes + self.recv_bytes

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Meter:
    """Per-label counters plus the exclusive wall time spent under each label.

    Time is attributed to the innermost active label: `enter`/`exit` flush the clock
    to the label that was current until then.
    """

    _counts: dict[Label, Counts] = field(default_factory=lambda: defaultdict(Counts))
    _stack: list[Label] = field(default_factory=lambda: [Label()])
    _since: float = field(default_factory=time.perf_counter)

    @property
    def current(self) -> Label:
        return self._stack[-1]

    def _flush(self) -> None:
        now = time.perf_counter()
        self._counts[self.current].seconds += now - self._since
        self._since = now

    def enter(self, label: Label) -> None:
        self._flush()
        self._stack.append(label)

    def exit(self) -> None:
        if len(self._stack) == 1:
            raise RuntimeError("Meter.exit without matching enter")
        self._flush()
        self._stack.pop()

    def record_send(self, nbytes: int) -> None:
        c = self._counts[self.current]
        c.sent_bytes += nbytes
        c.sent_msgs += 1

    def record_recv(self, nbytes: int, rounds: int) -> None:
        c = self._counts[self.current]
        c.recv_bytes += nbytes
        c.recv_msgs += 1
        c.rounds += rounds

    def totals(self, *, phase: str | None = None) -> Counts:
        """Sum over all labels (optionally of one phase)."""
        self._flush()
        out = Counts()
        for label, c in self._counts.items():
            if phase is None or label.phase == phase:
                out += c
        return out

    def breakdown(
        self, by: Iterable[str] = ("phase", "layer", "op")
    ) -> dict[tuple[str, ...], Counts]:
        """Counts grouped by the given label fields, e.g. ``by=("phase", "layer")``."""
        self._flush()
        keys = tuple(by)
        out: dict[tuple[str, ...], Counts] = defaultdict(Counts)
        for label, c in self._counts.items():
            out[tuple(getattr(label, k) for k in keys)] += c
        return dict(out)

    def snapshot(self) -> dict[Label, Counts]:
        """A deep copy of the per-label counts (for before/after differences)."""
        self._flush()
        return {k: Counts(**v.as_dict()) for k, v in self._counts.items()}

    def reset(self) -> None:
        self._counts.clear()
        self._since = time.perf_counter()


def diff(after: dict[Label, Counts], before: dict[Label, Counts]) -> Counts:
    """Total counts accumulated between two snapshots."""
    out = Counts()
    for label, c in after.items():
        out += c
        if label in before:
            b = before[label]
            neg = Counts(**{k: -v for k, v in b.as_dict().items()})
            out += neg
    return out
