"""comet-server whose every session suffers one failed local truncation (tests only).

`python -m tests.e2e.failing_server ARGS…` runs `comet-server ARGS…` with the server's
5th online truncation of each session off by 2^(64 − bits) on one element — what a
SecureML local truncation does with probability |v|/2^64.
"""

from __future__ import annotations

from common.mpc import engine
from common.mpc.roles import SERVER
from common.transport import NullChannel

FAIL_AT = 5
_trunc = engine.Mpc.trunc


def _failing(self: engine.Mpc, x, bits=None):
    y = _trunc(self, x, bits)
    if self.party != SERVER or isinstance(self.ch, NullChannel):
        return y  # the planning pass computes nothing real
    n = getattr(self, "_test_truncations", 0) + 1
    self._test_truncations = n  # one Mpc per session and phase
    if n == FAIL_AT:
        y = y.copy()
        shift = 64 - (self.f if bits is None else bits)
        y.flat[0] = (int(y.flat[0]) + (1 << shift)) % (1 << 64)
    return y


if __name__ == "__main__":
    engine.Mpc.trunc = _failing  # type: ignore[method-assign]
    from comet_server.cli import main

    main()
