"""comet-server whose every session suffers one failed truncation (tests only).

`python -m tests.e2e.failing_server ARGS…` runs `comet-server ARGS…` with the server's
5th online truncation round of each session off by 2^(64 − bits) on one element — what
a SecureML local truncation does with probability |v|/2^64 (and any truncation of a
value beyond its range).
"""

from __future__ import annotations

from common.mpc import engine
from common.mpc.roles import SERVER
from common.transport import NullChannel

FAIL_AT = 5
_trunc_many = engine.Mpc.trunc_many


def _failing(self: engine.Mpc, items):
    ys = _trunc_many(self, items)
    if self.party != SERVER or isinstance(self.ch, NullChannel) or not items:
        return ys  # the planning pass computes nothing real
    n = getattr(self, "_test_truncations", 0) + 1
    self._test_truncations = n  # one Mpc per session and phase
    if n == FAIL_AT:
        y = ys[0] = ys[0].copy()
        shift = 64 - items[0][1]
        y.flat[0] = (int(y.flat[0]) + (1 << shift)) % (1 << 64)
    return ys


if __name__ == "__main__":
    engine.Mpc.trunc_many = _failing  # type: ignore[method-assign]
    from comet_server.cli import main

    main()
