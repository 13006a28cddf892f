"""Throughput of the cryptographic generator against numpy's PCG64 (what it replaced).

`comet-bench rng`: words per second drawn by `SecureRng.words` (ChaCha20) and by
`PCG64.random_raw`, best of several repetitions, plus the share of one HE triple batch
spent drawing randomness (masks and flooding noise), so the cost in the offline phase
is visible.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from common.prg import SecureRng


def _best(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure(words: int = 1 << 23, reps: int = 5) -> dict[str, Any]:
    """Seconds and GB/s for `words` uint64 draws with each generator (one core)."""
    secure = SecureRng()
    pcg = np.random.Generator(np.random.PCG64(int.from_bytes(secure.bytes(16), "little")))
    t_sec = _best(lambda: secure.words(words), reps)
    t_pcg = _best(lambda: pcg.bit_generator.random_raw(words), reps)
    # Per 8192 HE triples the protocol draws: client a, b (2 words each), server a, b
    # and a 169-bit mask (3 words), and one flood of 8192 words per returned prime (3).
    per_batch = 8192 * (2 + 2 + 3 + 3)
    t_batch = _best(lambda: secure.words(per_batch), reps)
    return {
        "words": words,
        "secure_chacha20": {"seconds": t_sec, "gb_per_s": 8 * words / t_sec / 1e9},
        "pcg64": {"seconds": t_pcg, "gb_per_s": 8 * words / t_pcg / 1e9},
        "ratio_secure_over_pcg64": t_sec / t_pcg,
        "triple_batch_words": per_batch,
        "triple_batch_rng_ms": 1e3 * t_batch,
    }
