"""Defence in depth: refuse an opened output that no correct run can produce.

A private run can fail without any party deviating — under local truncation a share
wraps with probability |v|/2^64 (docs/SECURITY.md, "Truncation"; the default exact
truncation removes that, but a value beyond its 2^62 range, a bug or corrupted
correlations would fail the same way) and the value it corrupts is off by
~2^(64−2f) ≈ 2^38 at f = 13; that usually reaches the output as a value of 10^9 or
more. The card carries public bounds of a correct output (`OutputBounds`, calibrated
with a wide margin); `check_output` compares the client's opened output with them.
It is a check on public information and the client's own output: it reveals nothing
and costs nothing. It cannot see a failure that a LayerNorm squashed back into range;
the expected rate of failures (`comet-bench risk`) is what keeps those rare.
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import NDArray

from common.protocol.card import ModelCard


class FailedInference(RuntimeError):
    """The opened output lies outside every correct output's bounds."""


class UncheckedOutputWarning(UserWarning):
    """The card has no output bounds (compiled by an older version): no check."""


RETRY_HINT = (
    "the private computation failed (a corrupted intermediate value, e.g. a failed "
    "truncation: see `comet-bench risk`); nothing was revealed. Run it again: every "
    "run uses fresh correlations."
)


def check_output(card: ModelCard, kind: str, out: NDArray, mask: NDArray) -> None:
    """Raise `FailedInference` if `out` cannot be a correct output of `card`.

    kind: "logits" (out is (B, labels)) or "hidden" (out is (B, L, d); only real tokens,
    `mask` (B, L) = 1, are checked: coordinates and per-token norms). A card without
    bounds warns (`UncheckedOutputWarning`) and passes. Cost: one pass over `out`.
    """
    out = np.asarray(out, dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise FailedInference(f"the output is not finite: {RETRY_HINT}")
    b = card.sites.output
    if b is None:
        warnings.warn(
            f"model card {card.name!r} carries no output bounds (compiled by an older "
            "version of comet-server): the output cannot be checked",
            UncheckedOutputWarning,
            stacklevel=2,
        )
        return
    if kind == "logits":
        if b.logits is None:
            raise ValueError(f"model {card.name!r} has no logit bounds (not a classifier)")
        _within("logit", out, b.logits)
        return
    if kind != "hidden":
        raise ValueError(f"unknown output kind {kind!r}")
    real = out[np.asarray(mask, dtype=bool)]
    _within("hidden-state coordinate", real, b.hidden)
    _within("hidden-state norm", np.linalg.norm(real, axis=-1), b.hidden_norm)


def _within(what: str, x: NDArray, bounds: tuple[float, float]) -> None:
    lo, hi = bounds
    bad = (x < lo) | (x > hi)
    if bad.any():
        worst = x[bad][np.argmax(np.abs(x[bad]))]
        raise FailedInference(
            f"{int(bad.sum())} {what}(s) outside the model's bounds [{lo:.3g}, {hi:.3g}] "
            f"(e.g. {worst:.3g}): {RETRY_HINT}"
        )
