"""The cryptographic generator, and that no statistical generator reaches a secret path."""

from __future__ import annotations

import ast
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest

from common.he.crt_bfv import CrtBfvServer
from common.mpc.engine import Mpc
from common.mpc.he_protocols import _mask
from common.mpc.preprocessing import HeProvider, InsecureDealer, InsecureDealerWarning
from common.mpc.ring import random_ring
from common.prg import InsecureRandomnessError, SecureRng, require_secure
from common.transport import NullChannel
from tests.conftest import CHI2_LIMIT, chi2_uniform_bytes

COMMON = Path(__file__).resolve().parents[1] / "common"
STATISTICAL = [
    lambda: np.random.default_rng(1),
    lambda: np.random.Generator(np.random.PCG64(1)),
    lambda: np.random.Generator(np.random.Philox(1)),
    lambda: np.random.Generator(np.random.MT19937(1)),
    lambda: np.random.RandomState(1),
    lambda: random.Random(1),
]


def test_seeded_streams_repeat_and_unseeded_differ():
    assert np.array_equal(SecureRng(5).words(1000), SecureRng(5).words(1000))
    assert not np.array_equal(SecureRng(5).words(1000), SecureRng(6).words(1000))
    assert not np.array_equal(SecureRng().words(1000), SecureRng().words(1000))
    # chunked draws continue one stream
    a, b = SecureRng(9), SecureRng(9)
    assert np.array_equal(a.words(700_001), np.concatenate([b.words(3), b.words(699_998)]))


def test_keystream_is_chacha20():
    """The stream is ChaCha20 under SHA-256 of the seed (RFC 8439 block function), so
    its quality is the cipher's and not an implementation accident."""
    import hashlib

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    key = hashlib.sha256(b"comet.prg.v1:" + (3).to_bytes(1, "little")).digest()
    enc = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    assert SecureRng(3).bytes(4096) == enc.update(bytes(4096))


def test_uniform_bytes_and_ranges():
    rng = SecureRng()
    w = rng.words(1 << 16)
    for byte in range(8):  # every byte position of the words
        assert chi2_uniform_bytes(w << np.uint64(8 * (7 - byte))) < CHI2_LIMIT
    s = rng.signed_uniform(5, 100_000)
    assert s.min() == -32 and s.max() == 31
    u = rng.uniform_bits(3, 10_000)
    assert u.max() == 7 and u.dtype == np.uint64
    b = rng.below(10, 100_000)
    counts = np.bincount(b, minlength=10)
    assert b.min() == 0 and b.max() == 9
    assert np.all(np.abs(counts - 10_000) < 6 * np.sqrt(10_000))
    w = rng.words(10)
    w[0] = 1  # writable, owned
    with pytest.raises(ValueError):
        rng.signed_uniform(63, 1)


def test_spawned_streams_are_independent():
    parent = SecureRng(1)
    child = parent.spawn()
    assert not np.array_equal(child.words(100), SecureRng(1).spawn().words(50))
    assert not np.array_equal(child.words(100), parent.words(100))


def test_refuses_pickle_and_fork():
    rng = SecureRng()
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(rng)
    pid = os.fork()
    if pid == 0:  # child: the copied generator must refuse to repeat the parent's stream
        try:
            rng.words(1)
        except RuntimeError:
            os._exit(0)
        os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    rng.words(1)  # the parent still works


@pytest.mark.parametrize("make", STATISTICAL)
def test_statistical_generators_never_reach_a_secret_path(make, he_params):
    """Every entry point that draws shares, masks or noise refuses a non-cryptographic
    generator (PCG64, Philox, MT19937, Python's Mersenne Twister)."""
    with pytest.raises(InsecureRandomnessError):
        require_secure(make())
    with pytest.raises(InsecureRandomnessError):
        random_ring(make(), 4)
    with pytest.raises(InsecureRandomnessError):
        _mask(make(), 100, (4,))
    with pytest.raises(InsecureRandomnessError):
        Mpc(NullChannel(0), None, rng=make())
    with pytest.raises(InsecureRandomnessError):
        HeProvider(rng=make())
    with pytest.raises(InsecureRandomnessError), pytest.warns(InsecureDealerWarning):
        InsecureDealer(make())
    with pytest.raises(InsecureRandomnessError):
        CrtBfvServer(he_params, [b""] * he_params.max_primes, make())


def _statistical_uses(tree: ast.AST) -> list[str]:
    bad = []
    banned_names = {"PCG64", "PCG64DXSM", "Philox", "MT19937", "SFC64", "default_rng"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bad += [a.name for a in node.names if a.name in {"random", "numpy.random"}]
        elif isinstance(node, ast.ImportFrom):
            if node.module in {"random", "numpy.random"} or (
                node.module == "numpy" and any(a.name == "random" for a in node.names)
            ):
                bad.append(f"from {node.module} import …")
        elif isinstance(node, ast.Attribute) and node.attr == "random":
            if isinstance(node.value, ast.Name) and node.value.id in {"np", "numpy"}:
                bad.append(f"{node.value.id}.random")
        elif isinstance(node, ast.Attribute | ast.Name):
            name = node.attr if isinstance(node, ast.Attribute) else node.id
            if name in banned_names:
                bad.append(name)
    return bad


def test_no_statistical_generator_under_common():
    found = {}
    for path in COMMON.rglob("*.py"):
        uses = _statistical_uses(ast.parse(path.read_text(), str(path)))
        if uses:
            found[str(path.relative_to(COMMON))] = uses
    assert found == {}


def test_the_scan_sees_statistical_generators():
    src = "import numpy as np\nfrom numpy.random import PCG64\ng = np.random.default_rng()\n"
    assert len(_statistical_uses(ast.parse(src))) >= 3
