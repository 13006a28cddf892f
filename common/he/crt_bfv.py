"""BFV under several plaintext primes (CRT), client-keyed, for exact Z_{2^64} products.

One SEAL context per plaintext prime p_i (all with the same ring degree and
coefficient modulus). The client owns the secret keys; the server sees public keys
and ciphertexts only. A product computed under every p_i is an exact integer once the
client CRT-reconstructs it, which is how values of Z_{2^64} survive a 58-bit
plaintext space.

Returned ciphertexts are made independent of the server's operands before they leave
(`CrtBfvServer.seal_result`): mod-switch to the return level, add a fresh public-key
encryption of zero (re-randomises the mask part), then add "flooding" noise to c0,
wide enough that the client's view of the whole session is within 2^-40 of one that
does not depend on the server's operands (`CrtBfvParams.flood_bits`, docs/SECURITY.md).
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import tenseal.sealapi as seal
from numpy.typing import NDArray

from common.he.compact import check_room, compact_bytes, pack, unpack
from common.he.crt import CrtBasis, addmod, limbs_mod, mulhi_const, mulmod_const, submod
from common.he.galois_merge import merge_noise_bits
from common.he.seal_io import (
    SealIO,
    plaintext_coeffs,
    plaintext_members,
    seeded_c0,
    split_ciphertext,
    wrap,
)
from common.prg import SecureRng, require_secure

U64 = np.uint64


def _parms_bytes(parms_id: object) -> bytes:
    return struct.pack("<4Q", *parms_id)


@dataclass(frozen=True)
class CrtBfvParams:
    """Public HE parameters, agreed in the session handshake.

    coeff_bits: SEAL coefficient modulus; the last prime is the special (key) prime,
    which no data level uses (no key switching here), so it is as small as SEAL allows
    (17 bits) and the data level gets the rest of the 218 bits that are SEAL's 128-bit
    bound for N = 8192 (HE standard, checked by SEAL at context creation): 201 bits.
    The return level drops the small data prime: three 60-bit primes. The linear
    masks run on a chain of their own (`linear_bits`, `linear`): three 60-bit data
    primes, which are also its return level, and a 38-bit special prime over which
    their returns merge by key switching (docs/SECURITY.md, item 7 of "flooding").

    Statistical security holds for the whole session, not per coefficient
    (docs/SECURITY.md, "Session-level statistical security"): a session may expose at
    most 2^session_bits masked values and flooded coefficients to the client, and
    every mask and flood is sized so that the client's whole view is within
    2^-stat_sec of one that does not depend on the server's operands.
    """

    poly_degree: int = 8192
    coeff_bits: tuple[int, ...] = (60, 60, 60, 21, 17)
    plain_bits: int = 58
    max_primes: int = 4
    noise_sigma: float = 3.2  # SEAL's default error standard deviation
    stat_sec: int = 40  # for the whole session
    session_bits: int = 34  # log2 of the most values and coefficients one session exposes
    # Returns merged into one by Galois automorphisms (`common.he.galois_merge`; 1: none).
    # Off by default: merged at the first level, the demo's linear masks return half the
    # bytes but take 27 % more HE CPU (docs/BENCHMARKS.md, 2026-12-07).
    merge_max: int = 1
    # Data moduli the return level drops (1: the small one; 0: returns stay at the first
    # level, for a chain whose data level is the return level: `linear`).
    return_drops: int = 1
    # The linear masks' own chain (`linear`; None: they run on `coeff_bits`): their
    # products need no 201-bit data level (small weights, uploads at the return level),
    # so the 218 bits go to three 60-bit data primes and a 38-bit special prime, over
    # which their returns merge by key switching at the return level with little noise.
    linear_bits: tuple[int, ...] | None = (60, 60, 60, 38)
    linear_merge: int = 16  # block columns per merged linear-mask return on that chain

    def linear(self) -> CrtBfvParams:
        """The parameters of the linear masks' HE objects: this set itself, or its
        `linear_bits` chain with returns at the first level, merged `linear_merge`
        block columns at a time (the same ring, plaintext primes and security)."""
        if self.linear_bits is None:
            return self
        return replace(
            self,
            coeff_bits=self.linear_bits,
            return_drops=0,
            merge_max=self.linear_merge,
            linear_bits=None,
        )

    @property
    def slots(self) -> int:
        return self.poly_degree

    @property
    def upload_bytes(self) -> int:
        """Bytes of the data of one seeded client ciphertext, for cost estimates: c0 at
        every data level (c1 travels as a seed), each level in the bytes its modulus
        needs (SEAL's zstd leaves a 60-bit level at 8 bytes and takes a 21-bit one to
        about 3.5)."""
        per = sum(math.ceil(b / 8) + 0.5 * (b < 60) for b in self.coeff_bits[:-1])
        return int(self.poly_degree * per)

    @property
    def upload_bytes_low(self) -> int:
        """Bytes of the data of one seeded client ciphertext made at the return level
        (`CrtBfvClient.encrypt_low`): c0 at the return level's moduli, 8 bytes each."""
        return 8 * self.poly_degree * self.return_moduli

    @property
    def upload_max(self) -> int:
        """Most bytes of the data of one seeded client ciphertext (8 per level and
        coefficient: SEAL's serialization of incompressible data)."""
        return 8 * self.poly_degree * (len(self.coeff_bits) - 1)

    @property
    def full_bits(self) -> int:
        return sum(self.coeff_bits[:-1])

    @property
    def return_bits(self) -> int:
        return sum(self.coeff_bits[: self.return_moduli])

    @property
    def return_moduli(self) -> int:
        return len(self.coeff_bits) - 1 - self.return_drops

    @property
    def exposure_limit(self) -> int:
        """The most masked values plus flooded coefficients a session may return."""
        return 1 << self.session_bits

    @cached_property
    def plain_primes(self) -> list[int]:
        primes = [
            m.value()
            for m in seal.PlainModulus.Batching(
                self.poly_degree, [self.plain_bits] * self.max_primes
            )
        ]
        coeff = {
            m.value() for m in seal.CoeffModulus.Create(self.poly_degree, list(self.coeff_bits))
        }
        if coeff & set(primes):
            raise ValueError("plaintext primes must differ from the coefficient primes")
        return primes

    def mask_bits(self, value_bits: float) -> int:
        """Bits of the uniform integer mask that hides a product of `value_bits`: each
        masked value is then within 2^-(stat_sec+2+session_bits) of uniform, so all
        2^session_bits of a session together within 2^-(stat_sec+2)."""
        return math.ceil(value_bits) + self.stat_sec + 2 + self.session_bits

    def primes_for(self, value_bits: float) -> int:
        """How many plaintext primes hold |value + mask| (`mask_bits`), centred."""
        need = self.mask_bits(value_bits) + 2
        n = math.ceil(need / (self.plain_bits - 1))
        if n > self.max_primes:
            raise ValueError(f"{value_bits:.0f}-bit products need {n} primes > {self.max_primes}")
        return n

    def noise_bits(self, terms: int, plain_max: float, low: bool = False, merges: int = 0) -> float:
        """log2 of a bound on the server-dependent noise of one returned coefficient, at
        the return level, for a result summing `terms` ct×pt products whose plaintext
        coefficients are at most `plain_max` in absolute value.

        Per coefficient the product noise is Σ_j (e_j + ε_j)·y_j over terms·N
        coefficients y_j of the server's plaintexts: e_j is the client's fresh error
        (SEAL's rounded truncated normal, sub-Gaussian with parameter σ + 1/2), ε_j the
        rounding of the Δ·m encoding (|ε_j| ≤ 1/2, the client knows it: counted in the
        worst case). The random part is bounded with probability 1 − 2^-(stat_sec+
        3+session_bits) per coefficient (sub-Gaussian tail), so for every coefficient of
        a session with probability 1 − 2^-(stat_sec+2). The switch to the return level
        scales it by q_ret/q_full and adds at most (N + 1)/2 (rounding of c0 and c1·s,
        ternary s), in the worst case.

        `low`: the client's ciphertexts were made at the return level
        (`CrtBfvClient.encrypt_low`) and the products run there: the same fresh error
        and encoding rounding, at the return level's Δ, and no switch follows.

        `merges`: the products were then merged, `merges` tree levels deep, at the first
        level (`common.he.galois_merge`), before the switch: each level doubles the
        noise and adds one key switch's (`merge_noise_bits`), and the switch divides
        it all by the dropped modulus.
        """
        n = self.poly_degree
        tail = math.sqrt(2 * math.log(2.0) * (self.stat_sec + 4 + self.session_bits))
        random = tail * (self.noise_sigma + 0.5) * math.sqrt(terms * n) * plain_max
        fixed = 0.5 * terms * n * plain_max
        if low:
            if merges:
                raise ValueError("returns are merged at the first level only")
            return math.log2(random + fixed)
        noise = random + fixed
        if merges:
            bits = list(self.coeff_bits)
            noise = 2.0 ** merge_noise_bits(math.log2(noise), merges, bits[:-1], bits[-1], n)
        scaled = noise * 2.0 ** (self.return_bits - self.full_bits)
        return math.log2(scaled + (n + 1) / 2)

    def flood_bits(self, terms: int, plain_max: float, low: bool = False, merges: int = 0) -> int:
        """Width W of the flooding noise for a result of `terms` ct×pt products (see
        `noise_bits`): the flood is the sum of three independent uniform integers in
        [0, 2^W), centred (`flood_residues`), so |flood| < 1.5·2^W.

        W = noise bits + stat_sec + 2 + session_bits/2 + 1: by the Hellinger bound of
        docs/SECURITY.md (H² ≤ 0.58·(E/2^W)² per coefficient for a shift |E|, additive
        over coefficients), the flooded noise of all 2^session_bits coefficients of a
        session is within 2^-(stat_sec+2) of the flood alone. Raises if the return level
        cannot hold it (decryption would fail; `common.he.compact.check_room` checks the
        worst case exactly).
        """
        bound = math.ceil(self.noise_bits(terms, plain_max, low, merges))
        flood = bound + self.stat_sec + 2 + math.ceil(self.session_bits / 2) + 1
        if flood + 1 + self.plain_bits + 2 > self.return_bits:
            raise ValueError(
                "HE parameters leave no room for session-level noise flooding "
                f"({flood}-bit flood, {self.return_bits}-bit return level)"
            )
        return flood


def flood_residues(rng: SecureRng, bits: int, moduli: list[int], n: int) -> NDArray[np.uint64]:
    """(len(moduli), n) residues of n flooding samples F = U1 + U2 + U3 − 3·2^(bits−1),
    each U uniform in [0, 2^bits) from `rng` (|F| < 1.5·2^bits). Cost: 3·n·ceil(bits/64)
    keystream words, a multi-limb sum, one `limbs_mod` per modulus."""
    words = math.ceil(bits / 64)
    top = bits - 64 * (words - 1)
    total = [np.zeros(n, dtype=U64) for _ in range(words + 1)]  # U1 + U2 + U3 < 2^(bits+2)
    for _ in range(3):
        carry = np.zeros(n, dtype=U64)
        for w in range(words):
            limb = rng.words(n)
            if w == words - 1 and top < 64:
                limb &= U64((1 << top) - 1)
            s1 = total[w] + limb
            s2 = s1 + carry
            carry = (s1 < limb).astype(U64) + (s2 < s1).astype(U64)
            total[w] = s2
        total[words] += carry
    out = np.empty((len(moduli), n), dtype=U64)
    for j, q in enumerate(moduli):
        centre = np.full(n, (3 << (bits - 1)) % q, dtype=U64)
        out[j] = submod(limbs_mod(total, q), centre, q)
    return out


@dataclass
class _Prime:
    """SEAL objects for one plaintext prime."""

    p: int
    context: object
    encoder: object
    evaluator: object
    first_parms: object = None
    return_parms: object = None
    extras: dict = field(default_factory=dict)


def _make_prime(params: CrtBfvParams, p: int) -> _Prime:
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.BFV)
    parms.set_poly_modulus_degree(params.poly_degree)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(params.poly_degree, list(params.coeff_bits)))
    parms.set_plain_modulus(seal.Modulus(p))
    ctx = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    if not ctx.parameters_set():
        raise ValueError(f"invalid BFV parameters: {ctx.parameter_error_message()}")
    first = ctx.first_context_data()
    ret = first
    for _ in range(params.return_drops):
        ret = ret.next_context_data()
    return _Prime(
        p, ctx, seal.BatchEncoder(ctx), seal.Evaluator(ctx), first.parms_id(), ret.parms_id()
    )


# Up to this many wanted coefficients, `decrypt` reads them one by one (≈ 0.8 µs each).
_SPARSE_READ = 384


class _Base:
    def __init__(self, params: CrtBfvParams) -> None:
        self.params = params
        self.io = SealIO()
        self.primes = [_make_prime(params, p) for p in params.plain_primes]
        self._prefix: list[bytes | None] = [None] * len(self.primes)
        # Galois elements whose keys the client has sent this session (both parties)
        self.galois_elements: tuple[int, ...] = ()
        self._moduli = [
            [
                m.value()
                for m in pr.context.get_context_data(pr.return_parms).parms().coeff_modulus()
            ]
            for pr in self.primes
        ]

    def basis(self, n_primes: int) -> CrtBasis:
        return CrtBasis([pr.p for pr in self.primes[:n_primes]])

    def _plain_slots(self, i: int, residues: NDArray[np.uint64]) -> object:
        pt = seal.Plaintext()
        self.primes[i].encoder.encode(residues.tolist(), pt)
        return pt

    def _plain_coeffs(self, i: int, residues: NDArray[np.uint64]) -> object:
        pt = seal.Plaintext()
        self.io.load(pt, self.primes[i].context, wrap(plaintext_members(residues)))
        return pt

    def plain(self, i: int, residues: NDArray[np.uint64], coeffs: bool) -> object:
        """A plaintext for prime i: values in SIMD slots, or as polynomial coefficients."""
        return self._plain_coeffs(i, residues) if coeffs else self._plain_slots(i, residues)

    def _scaled_plain(self, i: int, m: NDArray[np.uint64]) -> NDArray[np.uint64]:
        """(levels, N) return-level residues of round(Q·m/p_i) for coefficients m < p_i,
        as SEAL's add_plain adds them: floor((Q·m + ⌊(p+1)/2⌋)/p) = Δ·m + ⌊(r·m + h)/p⌋
        with Q = Δ·p + r. Exact, in uint64: Shoup's quotient q' = ⌊m·⌊r·2^64/p⌋/2^64⌋
        leaves r·m − q'·p in [0, 2p), so two comparisons finish ⌊(r·m + h)/p⌋."""
        p = self.primes[i].p
        moduli = self._moduli[i]
        delta, r = divmod(math.prod(moduli), p)
        quot = mulhi_const(m, (r << 64) // p)
        rem = m * U64(r) - quot * U64(p) + U64((p + 1) // 2)  # in [0, 3p): no wrap
        est = quot + (rem >= U64(p)) + (rem >= U64(2 * p))
        out = np.empty((len(moduli), m.size), dtype=U64)
        for j, q in enumerate(moduli):
            out[j] = addmod(mulmod_const(m, delta % q, q), est, q)  # est ≤ p < q
        return out

    def return_size(self, kept: int | None = None) -> int:
        """Bytes of one returned ciphertext (2 polynomials at the return level, their
        low bits rounded away, c0 at `kept` coefficients or all: `common.he.compact`)."""
        return compact_bytes(self.params.poly_degree, kept)


class CrtBfvClient(_Base):
    """The key owner: encrypts its vectors, decrypts and CRT-reconstructs results."""

    def __init__(self, params: CrtBfvParams) -> None:
        super().__init__(params)
        for pr in self.primes:
            kg = seal.KeyGenerator(pr.context)
            pk = seal.PublicKey()
            kg.create_public_key(pk)
            pr.extras.update(
                sk=kg.secret_key(),
                pk=pk,
                encryptor=seal.Encryptor(pr.context, kg.secret_key()),
                decryptor=seal.Decryptor(pr.context, kg.secret_key()),
            )

    def public_keys(self) -> list[bytes]:
        """Serialized public keys, one per prime (sent once per session)."""
        return [self.io.save(pr.extras["pk"]) for pr in self.primes]

    def galois_keys(self, i: int, elements: list[int]) -> bytes:
        """Serialized (seeded) Galois keys of prime i for the automorphisms X ↦ X^g,
        g in `elements` (`common.he.galois_merge`): public, ≈ 1 MB per element and
        prime at the default parameters (one key-switching key per data modulus)."""
        kg = seal.KeyGenerator(self.primes[i].context, self.primes[i].extras["sk"])
        return self.io.save(kg.create_galois_keys(list(elements)))

    def encrypt(self, i: int, residues: NDArray[np.uint64], coeffs: bool = False) -> bytes:
        """Seeded symmetric encryption under prime i (half the size of a public-key one)."""
        pt = self.plain(i, residues, coeffs)
        return self.io.save(self.primes[i].extras["encryptor"].encrypt_symmetric(pt))

    def encrypt_low(self, i: int, residues: NDArray[np.uint64]) -> bytes:
        """Seeded symmetric encryption under prime i of the polynomial with these
        coefficients (< p_i), made at the return level: c0 on its 3 moduli (8 bytes
        each, uncompressed), c1 as SEAL's seed. For products by small plaintexts, which
        then run at the return level (`CrtBfvParams.noise_bits(…, low=True)`): 24
        instead of ≈ 27.5 bytes per coefficient, and no modulus switch by the server.

        SEAL encrypts messages at the first level only, so this is SEAL's seeded
        encryption of zero at the return level with Δ·m added to c0 exactly as SEAL's
        add_plain adds it (`_scaled_plain`). Cost: one SEAL zero encryption (2 NTTs per
        modulus), one serialization, a numpy CRT scaling of N coefficients.
        """
        pr = self.primes[i]
        n, levels = self.params.poly_degree, self.params.return_moduli
        zero = pr.extras["encryptor"].encrypt_zero_symmetric(pr.return_parms)
        body = bytearray(self.io.body(self.io.save(zero)))
        c0 = seeded_c0(body, n, levels)
        scaled = self._scaled_plain(i, np.asarray(residues, dtype=U64))
        for j, q in enumerate(self._moduli[i]):
            c0[j] = addmod(c0[j], scaled[j], q)
        return wrap(bytes(body))

    def _return_prefix(self, i: int) -> bytes:
        if self._prefix[i] is None:
            pr = self.primes[i]
            ct = seal.Ciphertext(pr.context)
            pr.extras["encryptor"].encrypt_zero_symmetric(pr.return_parms, ct)
            members = self.io.members(ct)
            self._prefix[i] = split_ciphertext(
                members, self.params.poly_degree, self.params.return_moduli
            )[0]
        return self._prefix[i]

    def load_result(self, i: int, raw: bytes, keep: NDArray[np.int64] | None = None) -> object:
        """A returned ciphertext under prime i; c0 was sent at the positions `keep`
        only (None: all), so only those coefficients decrypt to meaningful values."""
        data = unpack(raw, self._moduli[i], self.params.poly_degree, keep)
        ct = seal.Ciphertext(self.primes[i].context)
        return self.io.load(
            ct, self.primes[i].context, wrap(self._return_prefix(i) + data.tobytes())
        )

    def noise_budget(self, i: int, ct: object) -> int:
        return self.primes[i].extras["decryptor"].invariant_noise_budget(ct)

    def decrypt(
        self, i: int, ct: object, coeffs: bool = False, keep: NDArray[np.int64] | None = None
    ) -> NDArray[np.uint64]:
        """Residues mod p_i of the plaintext (slots, or coefficients). With `keep`
        (coefficients only), only those positions are read (the others are 0): for a
        sparse return, a few hundred bounds-checked reads instead of serializing the
        whole plaintext (≈ 0.2 against 0.4–0.7 ms)."""
        pr = self.primes[i]
        pt = seal.Plaintext()
        pr.extras["decryptor"].decrypt(ct, pt)
        if coeffs:
            out = np.zeros(self.params.poly_degree, dtype=U64)
            if keep is not None and keep.size <= _SPARSE_READ:
                count = pt.coeff_count()  # SEAL drops trailing zero coefficients
                got = [pt.data(int(j)) if j < count else 0 for j in keep]
                out[keep] = np.array(got, dtype=U64)
                return out
            c = plaintext_coeffs(self.io.members(pt))
            out[: c.size] = c
            return out
        return np.array(pr.encoder.decode_uint64(pt), dtype=U64)


class CrtBfvServer(_Base):
    """The evaluator: multiplies client ciphertexts by its own plaintexts, masks, floods."""

    def __init__(self, params: CrtBfvParams, public_keys: list[bytes], rng: SecureRng) -> None:
        super().__init__(params)
        if len(public_keys) != len(self.primes):
            raise ValueError("wrong number of public keys")
        self.rng = require_secure(rng, "CrtBfvServer")
        self.public_key_blobs = tuple(public_keys)  # for worker processes (public)
        self.galois_blobs: tuple[bytes, ...] = ()  # the client's Galois keys, per prime
        for pr, blob in zip(self.primes, public_keys, strict=True):
            pk = self.io.load(seal.PublicKey(), pr.context, blob)
            pr.extras["encryptor"] = seal.Encryptor(pr.context, pk)
            pr.extras["pk"] = pk
        self._pk_low: dict[tuple[int, int, bool], object] = {}
        self._galois: dict[tuple[int, int, bytes], object] = {}
        self._room_checked: set[int] = set()
        self._ledger = [0]  # masked values and flooded coefficients returned so far

    def load_galois_keys(self, i: int, blob: bytes) -> object:
        """The client's Galois keys for prime i (`CrtBfvClient.galois_keys`); raises
        ValueError if malformed."""
        keys = seal.GaloisKeys()
        try:
            self.io.load(keys, self.primes[i].context, blob)
        except Exception as exc:  # SEAL raises generic errors on bad input
            raise ValueError(f"malformed Galois keys: {exc}") from exc
        return keys

    @property
    def exposed(self) -> int:
        return self._ledger[0]

    @exposed.setter
    def exposed(self, value: int) -> None:
        self._ledger[0] = value

    def share_exposure(self, other: CrtBfvServer) -> None:
        """Count this object's returns against `other`'s budget too: the session's
        statistical budget covers every HE object of the session."""
        self._ledger = other._ledger

    def expose(self, count: int) -> None:
        """Account for `count` more returned coefficients (each a masked value under
        one prime, flooded); raise before the session's statistical budget
        (`CrtBfvParams.exposure_limit`) would be exceeded. Called by the protocols
        before any work on a batch, so a refused batch costs nothing."""
        limit = self.params.exposure_limit
        if self.exposed + count > limit:
            raise ValueError(
                f"this session would return more than 2^{self.params.session_bits} masked "
                "coefficients, beyond its statistical-security budget; send fewer or "
                "shorter texts"
            )
        self.exposed += count

    def load(self, i: int, blob: bytes, host: int | None = None, low: bool = False) -> object:
        """A client ciphertext under prime i (raises ValueError if malformed), made at
        the first level, or with `low` at the return level (`CrtBfvClient.encrypt_low`).

        With `host`, it is loaded into prime `host`'s context instead (its parameter id
        rewritten): every prime has the same ring and coefficient modulus, so products
        with plaintexts of small signed coefficients — the same NTT form under every
        prime — can run there and share one weight NTT (`seal_result(…, host=…)`
        finishes them under prime i).
        """
        pr = self.primes[i if host is None else host]
        level = "return_parms" if low else "first_parms"
        ct = seal.Ciphertext(pr.context)
        try:
            if host is not None and host != i:
                members = self.io.body(blob)
                if members[:32] != _parms_bytes(getattr(self.primes[i], level)):
                    raise ValueError("not a ciphertext of this prime")
                blob = wrap(_parms_bytes(getattr(pr, level)) + members[32:])
            self.io.load(ct, pr.context, blob)
        except Exception as exc:  # SEAL raises generic errors on bad input
            raise ValueError(f"malformed ciphertext: {exc}") from exc
        if ct.size() != 2 or ct.parms_id() != getattr(pr, level) or ct.is_ntt_form():
            where = "return" if low else "first"
            raise ValueError(f"ciphertext is not a fresh encryption at the {where} level")
        return ct

    def to_ntt(self, i: int, obj: object, plain: bool = False, low: bool = False) -> object:
        """`obj` in NTT form; a plaintext for the first level, or with `low` for the
        return level (to multiply ciphertexts made there, `CrtBfvClient.encrypt_low`)."""
        pr = self.primes[i]
        if plain:
            pr.evaluator.transform_to_ntt_inplace(obj, pr.return_parms if low else pr.first_parms)
        else:
            pr.evaluator.transform_to_ntt_inplace(obj)
        return obj

    def _accumulate(self, i: int, cts: list[object], pts: list[object], ntt: bool) -> object:
        # SEAL refuses products that would be "transparent" (an all-zero plaintext, e.g.
        # a padding block): skip those terms, and start from Enc(0) if none is left.
        pr = self.primes[i]
        ev = pr.evaluator
        acc = None
        tmp = seal.Ciphertext()
        for ct, pt in zip(cts, pts, strict=True):
            if pt.is_zero():
                continue
            if acc is None:
                acc = seal.Ciphertext()
                ev.multiply_plain(ct, pt, acc)
            else:
                ev.multiply_plain(ct, pt, tmp)
                ev.add_inplace(acc, tmp)
        if acc is None:
            acc = seal.Ciphertext(pr.context)
            pr.extras["encryptor"].encrypt_zero(pr.first_parms, acc)
            if ntt:
                ev.transform_to_ntt_inplace(acc)
        return acc

    def dot_plain(self, i: int, cts: list[object], pts: list[object]) -> object:
        """Σ ct_j · pt_j for ciphertexts and plaintexts in coefficient form."""
        return self._accumulate(i, cts, pts, ntt=False)

    def dot(self, i: int, cts: list[object], pts: list[object]) -> object:
        """Σ ct_j · pt_j (NTT form in, NTT form out)."""
        return self._accumulate(i, cts, pts, ntt=True)

    def _public_key_low(self, i: int, h: int, first: bool = False) -> object:
        """Prime i's public key (pk0, pk1) as a return-level (or with `first`, a
        first-level) NTT-form ciphertext of prime h's context: its first RNS components
        of that level (the key is in NTT form, component by component), the parameter
        id rewritten. Cached."""
        key = (i, h, first)
        if key not in self._pk_low:
            n = self.params.poly_degree
            levels = len(self.params.coeff_bits) - 1 if first else self.params.return_moduli
            hp = self.primes[h]
            _, data = split_ciphertext(
                self.io.members(self.primes[i].extras["pk"].data()), n, len(self.params.coeff_bits)
            )
            probe = seal.Ciphertext(hp.context)
            hp.extras["encryptor"].encrypt_zero(hp.first_parms if first else hp.return_parms, probe)
            hp.evaluator.transform_to_ntt_inplace(probe)
            prefix, _ = split_ciphertext(self.io.members(probe), n, levels)
            body = np.ascontiguousarray(data[:, :levels]).tobytes()
            ct = seal.Ciphertext(hp.context)
            self._pk_low[key] = self.io.load(ct, hp.context, wrap(prefix + body))
        return self._pk_low[key]

    def zero_first(self, i: int, h: int) -> object:
        """u·pk_i for a fresh ternary u: an encryption of zero under prime i, at the first
        level of prime h's context, NTT form; the stand-in for a product whose
        plaintexts are all zero (SEAL refuses transparent products) where a merge needs
        a ciphertext. Its noise, u·e, is below the products' bound (`noise_bits`)."""
        hp = self.primes[h]
        u = self.rng.below(3, self.params.poly_degree) - 1
        pt = self.to_ntt(h, self.plain(h, np.mod(u, hp.p).astype(U64), True), plain=True)
        out = seal.Ciphertext()
        hp.evaluator.multiply_plain(self._public_key_low(i, h, first=True), pt, out)
        return out

    def galois_keys_for(self, i: int, blob: bytes, host: int | None = None) -> object:
        """Prime i's Galois keys (`CrtBfvClient.galois_keys`), loaded into prime
        `host`'s context (their parameter ids rewritten: key switching does not depend
        on the plaintext modulus) or prime i's own. Cached per blob."""
        h = i if host is None else host
        key = (i, h, hashlib.sha256(blob).digest())
        if key not in self._galois:
            if h != i:
                body = self.io.body(blob)
                src = _parms_bytes(self.primes[i].context.key_parms_id())
                dst = _parms_bytes(self.primes[h].context.key_parms_id())
                blob = wrap(body.replace(src, dst))
            self._galois[key] = self.load_galois_keys(h, blob)
            while len(self._galois) > 4 * len(self.primes):
                self._galois.pop(next(iter(self._galois)))
        return self._galois[key]

    def _rerandomiser(self, i: int, h: int) -> object:
        """u·pk_i for a fresh uniform ternary u (the server's `SecureRng`), NTT form, at
        the return level of prime h's context: the (pk0·u, pk1·u) part of a public-key
        encryption of zero under prime i, computed directly at the return level (SEAL's
        `encrypt_zero` there encrypts one level up and switches: ≈ 3× the cost). The
        errors e0, e1 are added by the caller (`_small_errors`).
        Cost: one plaintext NTT and one ct×pt product on 3 moduli."""
        hp = self.primes[h]
        u = self.rng.below(3, self.params.poly_degree) - 1
        pt = self.to_ntt(h, self.plain(h, np.mod(u, hp.p).astype(U64), True), plain=True, low=True)
        out = seal.Ciphertext()
        hp.evaluator.multiply_plain(self._public_key_low(i, h), pt, out)
        return out

    def _small_errors(self, kept: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """The errors (e0 at `kept` coefficients, e1 at all N) of a re-randomiser:
        centred binomial with η = 21 (σ = 3.24, |e| ≤ 21; SEAL's own: σ = 3.2, |e| ≤ 19),
        from `SecureRng`. e0 is needed only where c0 travels (`seal_result`'s keep)."""
        n = self.params.poly_degree
        w = self.rng.uniform_bits(42, kept + n)
        lo = np.bitwise_count(w & U64((1 << 21) - 1)).astype(np.int64)
        e = lo - np.bitwise_count(w >> U64(21)).astype(np.int64)
        return e[:kept], e[kept:]

    def seal_result(
        self,
        i: int,
        ct: object,
        mask: NDArray[np.uint64],
        coeffs: bool,
        flood_bits: int,
        keep: NDArray[np.int64] | None = None,
        host: int | None = None,
    ) -> bytes:
        """Add the plaintext mask, switch to the return level, re-randomise, flood.

        Returns the coefficients with their low bits rounded away (`common.he.compact`,
        17 bytes per coefficient, or 9 + 8·|keep|/N when c0 is sent at the coefficient
        positions `keep` only; the client knows the metadata). `mask`: N slot values,
        or with `coeffs` the mask's coefficients at the positions `keep` (all N
        without it): a coefficient whose c0 does not travel needs none. `host`: the
        prime whose context `ct` was computed in (`load(…, host=…)`), if not i.
        Re-randomised by u·pk_i + (e0, e1) (`_rerandomiser`): a public-key encryption of
        zero under prime i, made at the return level.
        Cost: one mod switch (none if `ct` is there already), a plaintext NTT, a ct×pt
        product, an inverse NTT, one serialization.
        """
        if flood_bits not in self._room_checked:
            for j, pr in enumerate(self.primes):
                check_room(self._moduli[j], pr.p, self.params.poly_degree, flood_bits)
            self._room_checked.add(flood_bits)
        pr = self.primes[i]
        n, levels = self.params.poly_degree, self.params.return_moduli
        h = i if host is None else host
        hp = self.primes[h]
        ev = hp.evaluator
        rr = self._rerandomiser(i, h)
        if ct.is_ntt_form() and list(ct.parms_id()) == list(hp.return_parms):
            ev.add_inplace(ct, rr)  # products already on the return level: one inverse NTT
            ev.transform_from_ntt_inplace(ct)
        else:
            if ct.is_ntt_form():
                ev.transform_from_ntt_inplace(ct)
            # BFV's modulus switch divides by the last prime: the same under every prime
            ev.mod_switch_to_inplace(ct, hp.return_parms)
            ev.transform_from_ntt_inplace(rr)
            ev.add_inplace(ct, rr)
        if not coeffs:
            if hp is not pr:
                raise ValueError("products under another prime's context are coefficient-packed")
            ev.add_plain_inplace(ct, self.plain(i, mask, coeffs))
        _, data = split_ciphertext(self.io.members(ct), n, levels)
        # Only the c0 coefficients that travel (`keep`) need their mask, error and flood.
        sel = slice(None) if keep is None else keep
        c0 = data[0][:, sel]
        scaled = None
        if coeffs:  # Δ_i·mask added here, at the coefficients that travel only
            mask = np.asarray(mask, dtype=U64)
            if mask.shape != (c0.shape[1],):
                raise ValueError(f"{mask.size} mask coefficients for {c0.shape[1]} kept")
            scaled = self._scaled_plain(i, mask)
        e0, e1 = self._small_errors(c0.shape[1])
        flood = flood_residues(self.rng, flood_bits, self._moduli[i], c0.shape[1])
        for j, q in enumerate(self._moduli[i]):
            c = addmod(addmod(c0[j], flood[j], q), np.mod(e0, np.int64(q)).astype(U64), q)
            c0[j] = c if scaled is None else addmod(c, scaled[j], q)
            data[1, j] = addmod(data[1, j], np.mod(e1, np.int64(q)).astype(U64), q)
        data[0][:, sel] = c0
        return pack(data, self._moduli[i], keep)
