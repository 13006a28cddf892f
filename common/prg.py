"""The one source of randomness for secrets: a ChaCha20 keystream keyed from `os.urandom`.

Every share, mask and flooding-noise sample of the protocol comes from a `SecureRng`.
Statistical generators (numpy's bit generators, the Mersenne Twister) must not be used on
a secret path: each party sees millions of partly exposed outputs of the other's stream (the masked
one-hot of the lookup, the top limb of HE masks), enough for published state-recovery
attacks, and a recovered state would give away the text or the weights. ChaCha20 is a
stream cipher: its keystream is indistinguishable from uniform without the key, so
exposed outputs say nothing about the others.

The keystream comes from `cryptography` (OpenSSL's ChaCha20, vectorised); measured here
at ~2.5 GB/s on one core, no slower than numpy's statistical generators (docs/BENCHMARKS.md,
"Random generator").

A `SecureRng` refuses to be used in a process other than the one that created it: a
forked copy would repeat the parent's stream (two parties or two workers with the same
masks). It cannot be pickled for the same reason.
"""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from numpy.typing import NDArray

_KEY_BYTES = 32
_CHUNK_BYTES = 1 << 22  # keystream produced 4 MiB at a time (bounded scratch memory)


class InsecureRandomnessError(TypeError):
    """A secret path was handed something that is not a `SecureRng`."""


class SecureRng:
    """A ChaCha20 keystream as uniform uint64 words (and what derives from them).

    `SecureRng()` keys itself with 32 bytes from `os.urandom`. `SecureRng(seed=...)`
    derives the key from a fixed seed (SHA-256): for tests and for the test-only dealer,
    never for a real session. Not thread-safe; one instance per process.
    """

    __slots__ = ("_enc", "_pid", "_zeros", "seeded")

    def __init__(self, seed: int | bytes | str | None = None) -> None:
        if seed is None:
            key = os.urandom(_KEY_BYTES)
            self.seeded = False
        else:
            if isinstance(seed, int):
                seed = seed.to_bytes(max(1, (seed.bit_length() + 8) // 8), "little", signed=True)
            elif isinstance(seed, str):
                seed = seed.encode()
            key = hashlib.sha256(b"comet.prg.v1:" + bytes(seed)).digest()
            self.seeded = True
        # 16-byte nonce = 32-bit block counter + 96-bit nonce; one key per stream, so 0.
        self._enc = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
        self._pid = os.getpid()
        self._zeros = b""

    def __reduce__(self) -> tuple:
        raise TypeError("a SecureRng cannot be pickled (its copy would repeat the stream)")

    def _keystream(self, nbytes: int) -> NDArray[np.uint8]:
        if os.getpid() != self._pid:
            raise RuntimeError(
                "SecureRng used in a forked process: create a new one per process "
                "(a copy would repeat the parent's stream)"
            )
        # Uninitialised output (np.empty: no memset); update_into wants room for one
        # extra block beyond its input.
        out = np.empty(nbytes + 32, dtype=np.uint8)
        pos = 0
        while pos < nbytes:
            step = min(_CHUNK_BYTES, nbytes - pos)
            if len(self._zeros) < step:
                self._zeros = bytes(min(_CHUNK_BYTES, max(step, 1 << 16)))
            zeros = memoryview(self._zeros)[:step]
            self._enc.update_into(zeros, out[pos : pos + step + 32])
            pos += step
        return out[:nbytes]

    def bytes(self, n: int) -> bytes:
        """n uniform bytes."""
        return self._keystream(n).tobytes()

    def words(self, n: int) -> NDArray[np.uint64]:
        """n uniform uint64 words (a fresh, writable array). Cost: 8n keystream bytes."""
        if n < 0:
            raise ValueError("negative count")
        return self._keystream(8 * n).view(np.uint64)

    def random_bits(self, n: int) -> NDArray[np.uint8]:
        """n uniform bits as a uint8 array of 0s and 1s. Cost: ceil(n/8) keystream bytes."""
        if n < 0:
            raise ValueError("negative count")
        return np.unpackbits(self._keystream(-(-n // 8)))[:n]

    def uniform_bits(self, bits: int, n: int) -> NDArray[np.uint64]:
        """n uniform integers in [0, 2^bits), bits ≤ 64."""
        if not 0 < bits <= 64:
            raise ValueError(f"bits must be in (0, 64], got {bits}")
        w = self.words(n)
        if bits < 64:
            w &= np.uint64((1 << bits) - 1)
        return w

    def signed_uniform(self, bits: int, n: int) -> NDArray[np.int64]:
        """n uniform integers in [−2^bits, 2^bits), bits ≤ 62 (flooding noise)."""
        if not 0 < bits <= 62:
            raise ValueError(f"bits must be in (0, 62], got {bits}")
        return self.uniform_bits(bits + 1, n).view(np.int64) - np.int64(1 << bits)

    def below(self, bound: int, n: int) -> NDArray[np.int64]:
        """n uniform integers in [0, bound) for 0 < bound ≤ 2^62, by rejection (unbiased).

        For public, non-secret choices too (e.g. test data); cost ≈ 8n(1 + waste) bytes.
        """
        if not 0 < bound <= 1 << 62:
            raise ValueError("bound must be in (0, 2^62]")
        bits = max(1, math.ceil(math.log2(bound)))
        out = np.empty(0, np.int64)
        while out.size < n:
            cand = self.uniform_bits(bits, 2 * (n - out.size) + 16).view(np.int64)
            out = np.concatenate([out, cand[cand < bound]])
        return out[:n]

    def spawn(self) -> SecureRng:
        """An independent generator keyed from this one's stream (for a sub-protocol or a
        worker's keys sent over a private pipe: the child stream reveals nothing of this)."""
        child = SecureRng.__new__(SecureRng)
        key = self.bytes(_KEY_BYTES)
        child._enc = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
        child._pid = os.getpid()
        child._zeros = b""
        child.seeded = self.seeded
        return child


def require_secure(rng: object, where: str = "a secret path") -> SecureRng:
    """Return `rng` if it is a `SecureRng`, else raise `InsecureRandomnessError`.

    Called wherever shares, masks or noise are drawn, so that a statistical generator
    (numpy's statistical bit generators, Python's `random`) can never reach a secret path.
    """
    if not isinstance(rng, SecureRng):
        raise InsecureRandomnessError(
            f"{where} needs a SecureRng (ChaCha20 keyed from os.urandom), "
            f"got {type(rng).__module__}.{type(rng).__qualname__}"
        )
    return rng
