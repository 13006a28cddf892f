"""Prepared offline phases: one party's half of a correlation set, stored for one later use.

The offline phase depends only on public things (the model card, the batch size and
padded length, hence the plan), never on the text. A *prepared set* is one party's
correlations of one offline phase, stored until an inference of that shape runs only
its online phase. Both parties store their own half under the same random id; the
set also names the card digest and plan digest it was made for, and a party refuses
it for any other card, shape or plan.

**Exactly once.** A set is in one of three states, each a place on disk:
`tmp/` (being written: never usable), `ready/<id>.npz` (usable) and `claimed/`
(consumed). `claim()` moves the file from `ready/` to `claimed/` with one atomic
`rename` (of two concurrent claims one fails), loads it, and unlinks it — all before
the caller's first online message. A crash at any point leaves the file in `tmp/` or
`claimed/`, never back in `ready/`; both are swept when a store opens. So a set is
used at most once, and a second use is refused (`PreparedError`).

Files holding shares are mode 0600 in directories of mode 0700; nothing here logs a
share. Stored arrays are `np.savez` files read with `allow_pickle=False` (never a
pickle: the server's store holds what a client asked for).

The store is party-agnostic; `comet_client` and `comet_server` use it with their own
limits (the server bounds what clients can make it store: total bytes, bytes per
model, sets per client, expiry).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import threading
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from common.mpc.correlations import (
    Plan,
    Pool,
    PreprocessingError,
    pool_arrays,
    pool_from_arrays,
    pool_nbytes,
)

SET_ID = re.compile(r"^[0-9a-f]{32}$")
FORMAT = 1
META = "__meta__"
LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512)

# Test hook: called with a point name ("written", "claimed", "loaded"); the kill-point
# tests make it SIGKILL the process there.
_fault: Callable[[str], None] | None = None


def _at(point: str) -> None:
    if _fault is not None:
        _fault(point)


class PreparedError(RuntimeError):
    """A prepared set cannot be used: unknown, already used, expired, or made for
    another card, shape or plan."""


class StoreFull(PreparedError):
    """The store's limits leave no room for another set."""


def new_set_id() -> str:
    return secrets.token_hex(16)


def comet_home() -> Path:
    return Path(os.environ.get("COMET_HOME") or Path.home() / ".cache" / "comet")


def bucket_length(n: int, limit: int, buckets: tuple[int, ...] = LENGTH_BUCKETS) -> int:
    """The smallest bucket ≥ n that the model takes (else n itself: the model's limit)."""
    for b in buckets:
        if n <= b <= limit:
            return b
    return n


@dataclass(frozen=True)
class SetInfo:
    """Public facts about one stored half (its meta data: no share)."""

    id: str
    model: str
    card_digest: str
    plan_digest: str
    batch: int
    seq_len: int
    output: str
    provider: str
    party: int
    created: float
    nbytes: int
    segments: tuple[str, ...] = ()
    owner: str = ""  # server: the client (host) it was made for; client: the server
    expires: float = 0.0  # unix time after which the set is deleted (0: never)
    hide_lengths: bool = False  # made for a secret padding mask (`--hide-lengths`)
    server: str = ""  # client: the address it was prepared at (for display)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SetInfo:
        d = json.loads(text)
        d["segments"] = tuple(d.get("segments", ()))
        return cls(**d)

    def expired(self, now: float | None = None) -> bool:
        return bool(self.expires) and (now or time.time()) > self.expires

    def check(self, card_digest: str, plan_digest: str | None, batch: int, seq_len: int) -> None:
        """Refuse a set made for another card, shape or plan (a clear message); with
        `plan_digest` None, the card and shape only (the plan is checked later)."""
        if self.card_digest != card_digest:
            raise PreparedError(
                f"prepared set {self.id[:8]} was made for another model card "
                f"({self.card_digest[:12]}, this one is {card_digest[:12]})"
            )
        if (self.batch, self.seq_len) != (batch, seq_len):
            raise PreparedError(
                f"prepared set {self.id[:8]} was made for batch × length "
                f"{self.batch} × {self.seq_len}, not {batch} × {seq_len}"
            )
        if plan_digest is not None and self.plan_digest != plan_digest:
            raise PreparedError(
                f"prepared set {self.id[:8]} was made for another plan "
                f"({self.plan_digest[:12]}, this one is {plan_digest[:12]})"
            )


def plans_nbytes(plans: Mapping[str, Plan], party: int) -> int:
    return sum(pool_nbytes(p, party) for p in plans.values())


@dataclass
class Limits:
    """What a store may hold (None: no limit)."""

    max_bytes: int | None = None
    model_bytes: int | None = None  # per model
    per_owner: int | None = None  # sets per owner (the server: per client host)
    expiry: float | None = None  # seconds a set lives


class PreparedStore:
    """Prepared halves of one party under `root` (see the module docstring)."""

    def __init__(self, root: Path, limits: Limits | None = None) -> None:
        self.root = Path(root)
        self.limits = limits or Limits()
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[int, str, str]] = {}  # token → (bytes, model, owner)
        for sub in ("", "ready", "claimed", "tmp"):
            d = self.root / sub
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)
        self.sweep()

    @property
    def store_id(self) -> str:
        """A random id of this store, made once (a server announces it, so that a
        client's sets follow the store, not the address or port it is served on)."""
        f = self.root / "id"
        try:
            text = f.read_text().strip()
            if SET_ID.match(text):
                return text
        except FileNotFoundError:
            pass
        sid = new_set_id()
        tmp = self.root / f"id.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(sid)
        os.rename(tmp, f)
        return f.read_text().strip()

    # -- paths --------------------------------------------------------------------------
    def _ready(self, set_id: str) -> Path:
        if not SET_ID.match(set_id):
            raise PreparedError(f"malformed prepared-set id {set_id[:40]!r}")
        return self.root / "ready" / f"{set_id}.npz"

    def sweep(self) -> None:
        """Delete what no one can use: unfinished writes of dead writers, claimed files
        whose claimer is gone, expired sets."""
        for sub in ("tmp", "claimed"):
            for f in (self.root / sub).iterdir():
                pid = f.name.split(".")[1] if f.name.count(".") >= 2 else ""
                if not pid.isdigit() or not _alive(int(pid)):
                    with contextlib.suppress(FileNotFoundError):
                        f.unlink()
        self.list()

    # -- reading ------------------------------------------------------------------------
    @staticmethod
    def _meta(path: Path) -> SetInfo:
        with np.load(path, allow_pickle=False) as z:
            return SetInfo.from_json(z[META].tobytes().decode())

    def list(self) -> list[SetInfo]:
        """Every usable set, oldest first (expired ones are deleted)."""
        out = []
        now = time.time()
        for f in sorted((self.root / "ready").glob("*.npz")):
            try:
                info = self._meta(f)
            except FileNotFoundError:
                continue  # claimed meanwhile
            except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
                continue  # not ours / damaged: never used
            if info.expired(now):
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
                continue
            out.append(info)
        return sorted(out, key=lambda i: i.created)

    def get(self, set_id: str) -> SetInfo:
        path = self._ready(set_id)
        try:
            info = self._meta(path)
        except FileNotFoundError:
            raise PreparedError(
                f"prepared set {set_id[:8]} is unknown here, or was already used"
            ) from None
        if info.expired():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            raise PreparedError(f"prepared set {set_id[:8]} has expired")
        return info

    # -- writing ------------------------------------------------------------------------
    def reserve(self, nbytes: int, model: str, owner: str = "") -> str:
        """Room for one set of `nbytes` (raises `StoreFull` naming the limit); returns
        a token for `save` / `release`."""
        lim = self.limits
        with self._lock:
            sets = self.list()
            pend = list(self._pending.values())
            total = sum(s.nbytes for s in sets) + sum(p[0] for p in pend)
            if lim.max_bytes is not None and total + nbytes > lim.max_bytes:
                raise StoreFull(
                    f"the prepared-set store is full: a set of {nbytes} bytes does not fit "
                    f"its limit of {lim.max_bytes} bytes ({total} in use)"
                )
            used = sum(s.nbytes for s in sets if s.model == model)
            used += sum(p[0] for p in pend if p[1] == model)
            if lim.model_bytes is not None and used + nbytes > lim.model_bytes:
                raise StoreFull(
                    f"the quota for prepared sets of model {model!r} is full: "
                    f"{used} + {nbytes} bytes exceeds {lim.model_bytes}"
                )
            count = sum(1 for s in sets if s.owner == owner) + sum(1 for p in pend if p[2] == owner)
            if lim.per_owner is not None and count >= lim.per_owner:
                raise StoreFull(f"at most {lim.per_owner} prepared sets per client are kept")
            token = secrets.token_hex(8)
            self._pending[token] = (nbytes, model, owner)
            return token

    def release(self, token: str) -> None:
        with self._lock:
            self._pending.pop(token, None)

    def save(self, info: SetInfo, pools: Mapping[str, Pool], token: str | None = None) -> Path:
        """Write `pools` (segment → this party's pool) as set `info` atomically: a
        0600 file under tmp/, fsync'd, then renamed into ready/."""
        path = self._ready(info.id)
        if self.limits.expiry is not None and not info.expires:
            from dataclasses import replace

            info = replace(info, expires=info.created + self.limits.expiry)
        arrays: dict[str, np.ndarray] = {}
        for n, layer in enumerate(info.segments):
            for k, v in pool_arrays(pools[layer]).items():
                arrays[f"s{n}.{k}"] = v
        arrays[META] = np.frombuffer(info.to_json().encode(), dtype=np.uint8)
        tmp = self.root / "tmp" / f"{info.id}.{os.getpid()}.npz"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
                fh.flush()
                os.fsync(fh.fileno())
            _at("written")
            if path.exists():
                raise PreparedError(f"prepared set {info.id[:8]} exists already")
            os.rename(tmp, path)
            _fsync_dir(path.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            if token is not None:
                self.release(token)
        return path

    def claim(self, set_id: str) -> tuple[SetInfo, dict[str, dict[str, np.ndarray]]]:
        """Consume set `set_id`: rename it out of ready/ (atomic: it can never be
        claimed again), load it, delete it. Returns its info and its arrays per
        segment; check the info and rebuild pools with `pools_of`."""
        path = self._ready(set_id)
        dst = self.root / "claimed" / f"{set_id}.{os.getpid()}.npz"
        try:
            os.rename(path, dst)
        except FileNotFoundError:
            raise PreparedError(
                f"prepared set {set_id[:8]} is unknown here, or was already used"
            ) from None
        try:
            _fsync_dir(path.parent)
            _at("claimed")
            with np.load(dst, allow_pickle=False) as z:
                info = SetInfo.from_json(z[META].tobytes().decode())
                segs: dict[str, dict[str, np.ndarray]] = {s: {} for s in info.segments}
                for name in z.files:
                    if name == META:
                        continue
                    seg, _, key = name.partition(".")
                    if not seg.startswith("s") or not seg[1:].isdigit():
                        raise PreparedError(f"prepared set {set_id[:8]} is malformed")
                    i = int(seg[1:])
                    if i >= len(info.segments):
                        raise PreparedError(f"prepared set {set_id[:8]} is malformed")
                    segs[info.segments[i]][key] = z[name]
            _at("loaded")
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
            raise PreparedError(f"prepared set {set_id[:8]} is unreadable: {e}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                dst.unlink()
        if info.id != set_id:
            raise PreparedError(f"prepared set {set_id[:8]} is malformed")
        if info.expired():
            raise PreparedError(f"prepared set {set_id[:8]} has expired")
        return info, segs

    def delete(self, set_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._ready(set_id).unlink()


def pools_of(
    plans: Mapping[str, Plan], arrays: Mapping[str, Mapping[str, np.ndarray]]
) -> dict[str, Pool]:
    """This party's pools from a claimed set's arrays, checked against its own plans."""
    if list(plans) != list(arrays):
        raise PreparedError("the prepared set's layers do not match this plan")
    try:
        return {k: pool_from_arrays(plans[k], dict(arrays[k])) for k in plans}
    except PreprocessingError as e:
        raise PreparedError(f"the prepared set does not match this plan: {e}") from None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(d: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
