"""Raw access to SEAL's serialized objects.

TenSEAL's `sealapi` exposes neither coefficient setters nor buffer pointers and saves
only to files (zstd-compressed). SEAL's uncompressed layout is simple, so we read and
write it directly through a tmpfs file: a 16-byte header (magic 0xA15E, header size,
version, compression mode, total size) followed by the object's members, the
coefficient data last. Loading an uncompressed file costs ~0.1 ms.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from typing import Any

import numpy as np
import zstandard

_MAGIC = 0xA15E
_HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, major, minor, compr, reserved, size
_COMPR_NONE, _COMPR_ZSTD = 0, 2
_SCRATCH_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None


class _Scratch:
    """A private scratch file on tmpfs, reused for every save/load of one owner.

    The file is unlinked as soon as it is created and reached through this process's
    open descriptor (`/proc/self/fd/N`), so it disappears on every exit path — an
    exception, SIGTERM, SIGKILL — with no cleanup code to run. A forked child makes
    its own (it must not share the parent's file).
    """

    def __init__(self) -> None:
        self._pid = -1
        self._fd = -1
        self._path = ""
        self.name = ""
        self._open()

    def _open(self) -> None:
        fd, name = tempfile.mkstemp(prefix="comet-seal-", dir=_SCRATCH_DIR)
        self.name = name  # for tests and diagnostics: it no longer exists
        if os.path.isdir("/proc/self/fd"):
            os.unlink(name)
            self._fd, self._pid = fd, os.getpid()
            self._path = f"/proc/self/fd/{fd}"
        else:  # no procfs: keep the name, remove it when the owner goes
            os.close(fd)
            self._fd, self._pid, self._path = -1, os.getpid(), name

    @property
    def path(self) -> str:
        if os.getpid() != self._pid:
            self._open()
        return self._path

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            if self._fd >= 0:
                os.close(self._fd)
            elif self._path:
                os.unlink(self._path)


class SealIO:
    """Serialize/deserialize SEAL objects to raw bytes. Not thread-safe: one per thread."""

    def __init__(self) -> None:
        self._scratch = _Scratch()
        self._dctx = zstandard.ZstdDecompressor()

    def save(self, obj: Any) -> bytes:
        """SEAL's own serialization (as SEAL writes it, usually zstd)."""
        obj.save(self._scratch.path)
        with open(self._scratch.path, "rb") as fh:
            return fh.read()

    def load(self, obj: Any, context: Any, data: bytes) -> Any:
        with open(self._scratch.path, "wb") as fh:
            fh.write(data)
        obj.load(context, self._scratch.path)
        return obj

    def members(self, obj: Any) -> bytes:
        """The uncompressed member bytes of a SEAL object (header stripped)."""
        return self.body(self.save(obj))

    def body(self, data: bytes) -> bytes:
        magic, hsize, _, _, compr, _, size = _HEADER.unpack_from(data)
        if magic != _MAGIC or hsize != _HEADER.size or size != len(data):
            raise ValueError("not a SEAL serialization")
        payload = data[hsize:]
        if compr == _COMPR_NONE:
            return payload
        if compr == _COMPR_ZSTD:
            return self._dctx.decompress(payload, max_output_size=1 << 31)
        raise ValueError(f"unsupported SEAL compression mode {compr}")


def wrap(members: bytes) -> bytes:
    """Uncompressed SEAL serialization of the given member bytes."""
    return (
        _HEADER.pack(_MAGIC, _HEADER.size, 4, 3, _COMPR_NONE, 0, _HEADER.size + len(members))
        + members
    )


def dynarray(data: np.ndarray) -> bytes:
    """SEAL DynArray<uint64> serialization: nested header, element count, elements."""
    raw = np.ascontiguousarray(data, dtype=np.uint64).tobytes()
    return wrap(struct.pack("<Q", data.size) + raw)


def plaintext_members(coeffs: np.ndarray) -> bytes:
    """Members of a non-NTT BFV Plaintext with the given coefficients (each < t)."""
    head = bytes(32) + struct.pack("<Qd", coeffs.size, 1.0)  # parms_id zero, count, scale
    return head + dynarray(coeffs)


def plaintext_coeffs(members: bytes) -> np.ndarray:
    """Coefficients of a Plaintext from its member bytes."""
    (count,) = struct.unpack_from("<Q", members, 32)
    return np.frombuffer(members, dtype=np.uint64, count=count, offset=len(members) - 8 * count)


def split_ciphertext(members: bytes, degree: int, n_moduli: int) -> tuple[bytes, np.ndarray]:
    """(metadata prefix, writable (size, n_moduli, degree) coefficient array) of a Ciphertext."""
    (size,) = struct.unpack_from("<Q", members, 33)
    n = size * n_moduli * degree
    prefix = members[: len(members) - 8 * n]
    coeffs = np.frombuffer(members, dtype=np.uint64, offset=len(prefix)).copy()
    return prefix, coeffs.reshape(size, n_moduli, degree)


def seeded_c0(members: bytearray, degree: int, n_moduli: int) -> np.ndarray:
    """A writable (n_moduli, degree) view of c0 in the members of a seeded Ciphertext
    (SEAL's `Serializable` symmetric encryption): the 73 bytes of metadata (parms id,
    NTT flag, size, degree, moduli count, scale, correction factor), then c0 as a
    nested DynArray (header, count, data), then the seed where c1 would be."""
    start = 73 + _HEADER.size + 8
    (count,) = struct.unpack_from("<Q", members, start - 8)
    (size,) = struct.unpack_from("<Q", members, 33)
    if members[32] or size != 2 or count != n_moduli * degree:
        raise ValueError("not a seeded ciphertext in coefficient form of this shape")
    view = np.frombuffer(members, dtype=np.uint64, count=count, offset=start)
    return view.reshape(n_moduli, degree)
