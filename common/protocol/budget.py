"""What a planned session needs, known before any work: memory and its largest message.

A session's memory peaks when its correlations are all held (after the offline phase,
before the online one) while the last HE product of the offline phase still holds its
ciphertexts; its largest message is an HE upload or return batch, or an online opening.
Both follow from the plan (public shapes) and the HE parameters, so the server checks
them against its limits when a session starts and refuses, with RESOURCE_EXHAUSTED,
one that would fail halfway (the frame limit) or crowd out the other sessions (the
memory share of one session).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from common.mpc.correlations import Plan, pool_nbytes


class _Estimating(Protocol):
    def requirements(self, plan: Plan) -> tuple[int, int]: ...


@dataclass(frozen=True)
class SessionBudget:
    pool_bytes: int  # this party's correlations, all segments
    offline_bytes: int  # the largest HE product's working set
    largest_frame: int  # the largest message of the offline or online phase
    exposure: int = 0  # masked HE coefficients returned to the client (HE provider only)
    exposure_limit: int | None = None  # the HE parameters' statistical budget

    @property
    def peak_bytes(self) -> int:
        return self.pool_bytes + self.offline_bytes


def online_frame(plan: Plan) -> int:
    """Upper bound of the largest online message of `plan`: an opening sends 8 bytes per
    masked element (16 per Beaver product), and no opening masks more elements than the
    plan holds of one kind; a wrap exchange sends a bit per truncated value."""
    sizes = [16 * plan.triples, 8 * plan.squares, -(-plan.wraps // 8)]
    sizes += [8 * s.rows * max(s.k, s.n) for s in plan.linears]
    for (*batch, m, k, n), _ in plan.matmul_specs():
        sizes.append(8 * math.prod(batch) * (m * k + k * n))
    sizes += [8 * g.elements()[0] for g in plan.groups]
    return max(sizes, default=0)


def session_budget(
    segments: Mapping[str, Plan], party: int, provider: _Estimating
) -> SessionBudget:
    """The budget of one party's session over its per-layer plans `segments`.
    Cost: one pass over the plans' shapes (milliseconds)."""
    pool = sum(pool_nbytes(p, party) for p in segments.values())
    frame = offline = 0
    for plan in segments.values():
        f, w = provider.requirements(plan)
        frame = max(frame, f, online_frame(plan))
        offline = max(offline, w)
    count = getattr(provider, "exposure", None)
    if count is None:
        return SessionBudget(pool, offline, frame)
    exposure = sum(count(plan) for plan in segments.values())
    return SessionBudget(pool, offline, frame, exposure, provider.params.exposure_limit)


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} B"


def refusal(budget: SessionBudget, max_frame: int, max_memory: int | None) -> str | None:
    """Why a session with this budget is refused (None: it fits)."""
    if budget.exposure_limit is not None and budget.exposure > budget.exposure_limit:
        return (
            f"this request would return {budget.exposure:,} masked HE coefficients, above "
            f"the {budget.exposure_limit:,} of one session's statistical-security budget; "
            "send fewer or shorter texts"
        )
    if budget.largest_frame > max_frame:
        return (
            f"this request's largest message would be {_size(budget.largest_frame)}, above "
            f"the frame limit of {_size(max_frame)}; send fewer or shorter texts"
        )
    if max_memory is not None and budget.peak_bytes > max_memory:
        return (
            f"this request needs about {_size(budget.peak_bytes)} on the server, above the "
            f"{_size(max_memory)} one session may use; send fewer or shorter texts"
        )
    return None
