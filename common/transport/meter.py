"""Byte, message, round and time accounting, keyed by (phase, layer, op).

The meter is owned by one party's `Channel`; it records what that party sends and
receives, as serialized payload bytes, and the rounds it waits for the peer.
"""

from __future__ import annotations

import threading
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
    sent_ciphertexts: int = 0  # HE ciphertexts inside "ciphertexts" messages
    recv_ciphertexts: int = 0
    rounds: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of the party's own thread (not its HE workers)
    worker_cpu_seconds: float = 0.0  # CPU time of jobs it ran in HE worker processes

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
    """Per-label counters plus the exclusive wall and CPU time spent under each label.

    Time is attributed to the innermost active label: `enter`/`exit` flush the clocks
    to the label that was current until then. CPU time is that of the thread that runs
    the party's protocol (the one calling `enter`/`exit`), so it stays right when both
    parties run as threads of one process; a flush from another thread (a report read
    after the run) moves only the wall clock.
    """

    _counts: dict[Label, Counts] = field(default_factory=lambda: defaultdict(Counts))
    _stack: list[Label] = field(default_factory=lambda: [Label()])
    _since: float = field(default_factory=time.perf_counter)
    _owner: int | None = None
    _cpu_since: float = 0.0

    @property
    def current(self) -> Label:
        return self._stack[-1]

    def _flush(self, cpu: bool = False) -> None:
        now = time.perf_counter()
        c = self._counts[self.current]
        c.seconds += now - self._since
        self._since = now
        if cpu:
            tid, cpu_now = threading.get_ident(), time.thread_time()
            if tid == self._owner:
                c.cpu_seconds += cpu_now - self._cpu_since
            self._owner, self._cpu_since = tid, cpu_now

    def enter(self, label: Label) -> None:
        self._flush(cpu=True)
        self._stack.append(label)

    def exit(self) -> None:
        if len(self._stack) == 1:
            raise RuntimeError("Meter.exit without matching enter")
        self._flush(cpu=True)
        self._stack.pop()

    def record_send(self, nbytes: int, ciphertexts: int = 0) -> None:
        c = self._counts[self.current]
        c.sent_bytes += nbytes
        c.sent_msgs += 1
        c.sent_ciphertexts += ciphertexts

    def record_recv(self, nbytes: int, rounds: int, ciphertexts: int = 0) -> None:
        c = self._counts[self.current]
        c.recv_bytes += nbytes
        c.recv_msgs += 1
        c.rounds += rounds
        c.recv_ciphertexts += ciphertexts

    def record_worker_cpu(self, seconds: float) -> None:
        self._counts[self.current].worker_cpu_seconds += seconds

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
        self._owner = None


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
