"""Per-op costs of the two-party engine: bytes, rounds, time and error of each primitive.

Every op runs as its own two-party program through `run_local_program` (both parties
in one process, two threads, an in-process channel), so the offline phase of a run
produces exactly the correlations of that one op. Inputs are shared before, and the
output revealed to the client after, a `scope(op="bench")` around the op alone; the
online figures are read from that label only:

* ``online_bytes``: payload bytes sent by party 0 plus those sent by party 1;
* ``rounds``: max over the two parties of the rounds recorded under the label;
* ``online_s``: max over the two parties of the wall time spent under the label.

Offline figures cover the whole offline phase of the run (HE preprocessing, or the
insecure dealer), including the 32-byte-per-party plan check: ``offline_bytes`` sums
both parties' sent bytes, ``offline_s`` is the larger of the two parties' wall times.
HE key exchange (phase "setup") is reported separately as ``setup_bytes``.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from common.mpc.engine import Mpc
from common.mpc.ring import FixedPoint
from common.mpc.roles import CLIENT, SERVER
from common.mpc.runner import Program, run_local_program
from common.transport import Counts, Meter

BENCH = "bench"  # the op label the measured op runs under
PROVIDERS = ("he", "insecure_dealer")
SEED = 20240607

# Full-size attention matmul: one (128×64)·(64×128) product per head (Q·Kᵀ of one
# layer). Its HE offline phase runs two coefficient-packed products per head.
MATMUL_HEADS_FULL = 12


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one benchmark mode."""

    elementwise: int  # mul, square, share, reveal: number of values
    matmul: tuple[int, int, int, int]  # (heads, m, k, n)
    linear: tuple[int, int, int]  # (rows, k, out)
    mean: tuple[int, int]  # (rows, cols), mean over cols


FULL = Sizes(1 << 20, (MATMUL_HEADS_FULL, 128, 64, 128), (128, 768, 3072), (128, 768))
QUICK = Sizes(1 << 16, (1, 32, 64, 32), (32, 128, 512), (32, 128))


@dataclass
class Case:
    """One benchmark row before it is run."""

    op: str
    shape: str
    elems: int  # what the per-element figures divide by
    elems_of: str  # what `elems` counts
    program: Program
    data0: dict[str, Any]  # server's private inputs
    data1: dict[str, Any]  # client's private inputs
    reference: np.ndarray  # float64 result on the same real inputs
    online_bytes_model: int  # the engine's documented online cost (both parties)
    correlated: bool = True  # consumes offline correlations
    products: bool = False  # element-wise products (mul, square)
    extra: dict[str, Any] = field(default_factory=dict)


def _get(data: dict[str, Any] | None, key: str) -> Any:
    return None if data is None else data.get(key)


def _n(n: int) -> str:
    return f"{n:,}"


# -- cases ----------------------------------------------------------------------------
def _wrap(n: int) -> int:
    """Both parties' bytes for n exact truncations (`Mpc.trunc_many`: a bit each way)."""
    return 2 * -(-n // 8)


def case_mul(rng: np.random.Generator, n: int) -> Case:
    x, y = rng.standard_normal(n), rng.standard_normal(n)

    def program(m: Mpc, data: dict | None) -> Any:
        a = m.share(CLIENT, _get(data, "x"), (n,))
        b = m.share(SERVER, _get(data, "y"), (n,))
        with m.ch.scope(op=BENCH):
            z = m.mul(a, b)
        return m.reveal(z, to=CLIENT)

    return Case(
        "mul", f"{_n(n)} elementwise", n, "products", program, {"y": y}, {"x": x}, x * y,
        online_bytes_model=2 * 16 * n + _wrap(n), products=True,
    )  # fmt: skip


def case_square(rng: np.random.Generator, n: int) -> Case:
    x = rng.standard_normal(n)

    def program(m: Mpc, data: dict | None) -> Any:
        a = m.share(CLIENT, _get(data, "x"), (n,))
        with m.ch.scope(op=BENCH):
            z = m.square(a)
        return m.reveal(z, to=CLIENT)

    return Case(
        "square", f"{_n(n)} elementwise", n, "products", program, {}, {"x": x}, x * x,
        online_bytes_model=2 * 8 * n + _wrap(n), products=True,
    )  # fmt: skip


def case_matmul(rng: np.random.Generator, heads: int, m_: int, k: int, n: int) -> Case:
    xs, ys = (heads, m_, k), (heads, k, n)
    x, y = rng.standard_normal(xs), rng.standard_normal(ys)

    def program(m: Mpc, data: dict | None) -> Any:
        a = m.share(CLIENT, _get(data, "x"), xs)
        b = m.share(SERVER, _get(data, "y"), ys)
        with m.ch.scope(op=BENCH):
            z = m.matmul(a, b)
        return m.reveal(z, to=CLIENT)

    shape = f"{m_}×{k}·{k}×{n}"
    shape = f"{heads}×({shape})" if heads > 1 else f"{shape} (1 head)"
    return Case(
        "matmul", shape, heads * m_ * n, "outputs", program, {"y": y}, {"x": x}, x @ y,
        online_bytes_model=2 * 8 * heads * (m_ * k + k * n) + _wrap(heads * m_ * n),
    )  # fmt: skip


def case_linear(rng: np.random.Generator, rows: int, k: int, out: int) -> Case:
    x = rng.standard_normal((rows, k))
    w = rng.normal(0.0, 0.02, (k, out))
    b = rng.normal(0.0, 0.02, out)

    def program(m: Mpc, data: dict | None) -> Any:
        a = m.share(CLIENT, _get(data, "x"), (rows, k))
        with m.ch.scope(op=BENCH):
            z = m.linear(a, "w", out, weight=_get(data, "w"), bias=_get(data, "b"))
        return m.reveal(z, to=CLIENT)

    return Case(
        "linear", f"{rows}×{k}·{k}×{out} +bias", rows * out, "outputs", program,
        {"w": w, "b": b}, {"x": x}, x @ w + b, online_bytes_model=8 * rows * k + _wrap(rows * out),
    )  # fmt: skip


def case_mean(rng: np.random.Generator, rows: int, cols: int) -> Case:
    x = rng.standard_normal((rows, cols))

    def program(m: Mpc, data: dict | None) -> Any:
        a = m.share(CLIENT, _get(data, "x"), (rows, cols))
        with m.ch.scope(op=BENCH):
            z = m.mean(a, axis=-1)
        return m.reveal(z, to=CLIENT)

    return Case(
        "mean", f"{rows}×{cols} last axis", rows * cols, "inputs", program, {}, {"x": x},
        x.mean(axis=-1), online_bytes_model=_wrap(rows),
    )  # fmt: skip


def case_trunc(rng: np.random.Generator, n: int) -> Case:
    """Exact truncation alone (`Mpc.trunc`) of values at scale 2^(2f) (a product's)."""
    x = rng.standard_normal(n) * 100

    def program(m: Mpc, data: dict | None) -> Any:
        a = m.share(CLIENT, _get(data, "x"), (n,))
        raw = m.mul_public_int(a, 1 << m.f)  # x at scale 2^(2f), as a product would be
        with m.ch.scope(op=BENCH):
            z = m.trunc(raw)
        return m.reveal(z, to=CLIENT)

    return Case(
        "trunc", f"{_n(n)} exact, scale 2^2f", n, "values", program, {}, {"x": x}, x,
        online_bytes_model=_wrap(n),
    )  # fmt: skip


def case_share(rng: np.random.Generator, n: int) -> Case:
    x = rng.standard_normal(n)

    def program(m: Mpc, data: dict | None) -> Any:
        with m.ch.scope(op=BENCH):
            a = m.share(CLIENT, _get(data, "x"), (n,))
        return m.reveal(a, to=CLIENT)

    return Case(
        "share", f"{_n(n)} client→server", n, "values", program, {}, {"x": x}, x,
        online_bytes_model=8 * n, correlated=False,
    )  # fmt: skip


def case_reveal(rng: np.random.Generator, n: int) -> Case:
    x = rng.standard_normal(n)

    def program(m: Mpc, data: dict | None) -> Any:
        a = m.share(CLIENT, _get(data, "x"), (n,))
        with m.ch.scope(op=BENCH):
            z = m.reveal(a, to=CLIENT)
        return z

    return Case(
        "reveal", f"{_n(n)} to client", n, "values", program, {}, {"x": x}, x,
        online_bytes_model=8 * n, correlated=False,
    )  # fmt: skip


OPS = ("mul", "square", "matmul", "linear", "mean", "trunc", "share", "reveal")


def build_cases(quick: bool, seed: int = SEED, only: Iterable[str] | None = None) -> list[Case]:
    """The benchmark rows of one mode, in table order (`only` filters by op name)."""
    s = QUICK if quick else FULL
    wanted = set(OPS if only is None else only)
    unknown = wanted - set(OPS)
    if unknown:
        raise ValueError(f"unknown op(s) {sorted(unknown)}; choose from {list(OPS)}")
    rng = np.random.default_rng(seed)
    makers: dict[str, Callable[[], Case]] = {
        "mul": lambda: case_mul(rng, s.elementwise),
        "square": lambda: case_square(rng, s.elementwise),
        "matmul": lambda: case_matmul(rng, *s.matmul),
        "linear": lambda: case_linear(rng, *s.linear),
        "mean": lambda: case_mean(rng, *s.mean),
        "trunc": lambda: case_trunc(rng, s.elementwise),
        "share": lambda: case_share(rng, s.elementwise),
        "reveal": lambda: case_reveal(rng, s.elementwise),
    }
    return [makers[op]() for op in OPS if op in wanted]


# -- measurement ------------------------------------------------------------------------
def _label(meter: Meter, phase: str, op: str) -> Counts:
    return meter.breakdown(by=("phase", "op")).get((phase, op), Counts())


def _per(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def run_case(case: Case, provider: str, fxp: FixedPoint | None = None) -> dict[str, Any]:
    """Run one case end to end and return its row (see the module docstring)."""
    t0 = time.perf_counter()
    r0, r1 = run_local_program(case.program, case.data0, case.data1, provider=provider, fxp=fxp)
    total_s = time.perf_counter() - t0
    meters = (r0.meter, r1.meter)
    bench = [_label(m, "online", BENCH) for m in meters]
    offline = [m.totals(phase="offline") for m in meters]
    setup = [m.totals(phase="setup") for m in meters]

    got = np.asarray(r1.result, dtype=np.float64)
    if got.shape != case.reference.shape:
        raise RuntimeError(f"{case.op}: result shape {got.shape} != {case.reference.shape}")
    err = float(np.max(np.abs(got - case.reference))) if got.size else 0.0

    online_bytes = sum(c.sent_bytes for c in bench)
    offline_bytes = sum(c.sent_bytes for c in offline)
    online_s = max(c.seconds for c in bench)
    offline_s = max(c.seconds for c in offline)
    row: dict[str, Any] = {
        "op": case.op,
        "shape": case.shape,
        "provider": provider,
        "offline_bytes": offline_bytes,
        "online_bytes": online_bytes,
        "rounds": max(c.rounds for c in bench),
        "offline_s": offline_s,
        "online_s": online_s,
        "max_abs_err": err,
        # derived and supporting figures (JSON only)
        "elems": case.elems,
        "elems_of": case.elems_of,
        "online_bytes_per_elem": online_bytes / case.elems,
        "online_bytes_model": case.online_bytes_model,
        "offline_bytes_per_elem": offline_bytes / case.elems if case.correlated else None,
        "offline_elems_per_s": _per(case.elems, offline_s) if case.correlated else None,
        "setup_bytes": sum(c.sent_bytes for c in setup),
        "online_sent_bytes_by_party": [c.sent_bytes for c in bench],
        "offline_sent_bytes_by_party": [c.sent_bytes for c in offline],
        "online_rounds_by_party": [c.rounds for c in bench],
        "online_s_by_party": [c.seconds for c in bench],
        "offline_s_by_party": [c.seconds for c in offline],
        "total_s": total_s,
    }
    if case.products:
        row["online_products_per_s"] = _per(case.elems, online_s)
    row.update(case.extra)
    return row


def run_ops(
    quick: bool,
    provider: str,
    *,
    seed: int = SEED,
    only: Iterable[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every case of a mode; returns ``{"ops": [row, ...], "meta": {...}}``."""
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; choose from {list(PROVIDERS)}")
    fxp = FixedPoint()
    cases = build_cases(quick, seed, only)
    rows = []
    for i, case in enumerate(cases, 1):
        if progress:
            progress(f"[{i}/{len(cases)}] {case.op} {case.shape} ({provider}) ...")
        row = run_case(case, provider, fxp)
        if progress:
            progress(
                f"    done in {row['total_s']:.1f} s (offline {row['offline_s']:.2f} s, "
                f"online {row['online_s'] * 1e3:.1f} ms)"
            )
        rows.append(row)
    return {"ops": rows, "meta": meta(quick, provider, seed, fxp)}


# -- metadata ---------------------------------------------------------------------------
def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def meta(quick: bool, provider: str, seed: int, fxp: FixedPoint) -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    out: dict[str, Any] = {
        "mode": "quick" if quick else "full",
        "provider": provider,
        "seed": seed,
        "frac_bits": fxp.frac_bits,
        "sizes": asdict(sizes),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "machine": {
            "platform": platform.platform(),
            "cpu": _cpu_model(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "tenseal": _version("tenseal"),
        },
        "notes": [
            "Both parties run in one process as two threads over an in-process queue "
            "channel: no network latency or bandwidth limit, and the parties share the "
            "CPU and the GIL, so times are not those of two machines.",
            "online_s: max over parties of the wall time under the op's own label "
            "(includes waiting for the peer); offline_s: max over parties of the wall "
            "time of the whole offline phase of a run that holds only this op.",
            "online_bytes / offline_bytes: payload bytes sent by both parties together; "
            "setup_bytes: HE public-key transfer (phase 'setup'), once per session.",
            "offline_s includes the plan check (1 round); with provider 'he' the client "
            "also waits there for the server to finish building its HE contexts, which "
            "is the whole offline_s of the rows that need no correlations.",
            "rounds: max over parties of the rounds recorded under the op's label "
            "(the channel counts rounds per scope, so earlier traffic does not leak in).",
            "max_abs_err: revealed result vs float64 numpy on the same real inputs.",
        ],
    }
    if provider == "he":
        from common.he.crt_bfv import CrtBfvParams

        out["he_params"] = asdict(CrtBfvParams())
    if provider == "insecure_dealer":
        out["notes"].append("insecure_dealer: correlations from a shared seed; NOT SECURE.")
    return out
