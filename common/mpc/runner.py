"""Run a two-party program end to end: plan, offline phase, online phase."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.mpc.engine import Mpc
from common.mpc.preprocessing import HeProvider, InsecureDealer, plan_program
from common.mpc.ring import FixedPoint
from common.transport import Channel, Meter, run_local

Program = Callable[[Mpc, Any], Any]


@dataclass
class PartyRun:
    result: Any
    meter: Meter


def run_party(
    ch: Channel,
    program: Program,
    data: Any,
    provider: HeProvider | InsecureDealer,
    fxp: FixedPoint | None = None,
) -> PartyRun:
    """One party's full run: plan on zeros, generate correlations, run online.

    `data` is this party's private input (None where it has none); the program must
    use it only where the party owns the input, so that the plan is the same on both.
    """
    fxp = fxp or FixedPoint()
    plan, weights = plan_program(lambda m: program(m, data), ch.party, fxp)
    provider.setup(ch)
    pool = provider.generate(ch, plan, weights)
    with ch.scope(phase="online"):
        result = program(Mpc(ch, pool, fxp), data)
    return PartyRun(result, ch.meter)


def run_local_program(
    program: Program,
    data0: Any,
    data1: Any,
    provider: str = "he",
    fxp: FixedPoint | None = None,
) -> tuple[PartyRun, PartyRun]:
    """Both parties in one process over an in-process channel (tests, benchmarks)."""
    from common.mpc.preprocessing import make_provider

    def body(ch: Channel, data: Any) -> PartyRun:
        return run_party(ch, program, data, make_provider(provider), fxp)

    return run_local(body, (data0,), (data1,))
