"""HE parameters without an HE library: the parameter type, sizes, headroom, and refusing sets that
cannot hold the sum (errors name the config path, `encryption.*`, that the parameters come from)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from hefl.errors import ConfigError
from hefl.schema import MAX_CLIENTS


@dataclass(frozen=True)
class HeParams:
    """What crypto code needs of an experiment's encryption; key folders are passed separately."""

    scheme: str = "none"  # none | ckks | bfv | paillier
    backend: str = "tenseal"  # ckks and bfv: the library, tenseal | seal (SEAL-Python)
    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[
        int, ...
    ] = ()  # () takes the scheme's default: ckks (40, 20), bfv (60, 20)
    scale_bits: int = 30  # ckks: values are scaled by 2^scale_bits
    plain_modulus_bits: int = 47  # bfv: t is the largest batching prime below 2^bits
    quant_bits: int = 16  # bfv, paillier: bits per quantized value
    key_bits: int = 2048  # paillier: bits of the public modulus n
    clip: float = 1.0  # every scheme: each value a client sends is clipped to [-clip, clip]
    processes: int = 1  # clients: worker processes that encrypt an update's ciphertexts
    seeded: bool = True  # clients: fresh ciphertexts as c0 and c1's seed (ckks, bfv)
    seed_list_max: int = 16  # adders: sums of at most this many seeded ones go as seed lists
    # clients: the most encryptions of zero made ahead for the next update (the rest of its
    # ciphertexts are encrypted at once): bounds what they hold (64 KiB each at the defaults)
    precompute_window: int = 1024
    # paillier: the sums must have room for this many clients' values (0: the most an experiment
    # can have); keys do not depend on it
    clients: int = 0

    @property
    def scale(self) -> float:
        """CKKS: the factor values are encoded at, 2^scale_bits."""
        return 2.0**self.scale_bits


DEFAULT_COEFFS = {"ckks": (40, 20), "bfv": (60, 20)}
MAX_COEFF_BITS = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}  # SEAL, 128-bit security


def coeffs(enc: HeParams) -> tuple[int, ...]:
    return enc.coeff_mod_bit_sizes or DEFAULT_COEFFS.get(enc.scheme, ())


def slots(enc: HeParams) -> int:
    """Values in one ciphertext: n/2 for CKKS; n slots of two packed values for BFV; as many lanes
    as fit below the modulus for Paillier."""
    if enc.scheme == "paillier":
        return (enc.key_bits - 1) // paillier_lane_bits(enc)
    return enc.poly_modulus_degree // 2 if enc.scheme == "ckks" else 2 * enc.poly_modulus_degree


PAILLIER_KEY_BITS = (512, 8192)  # below 2048 for tests only: a 512-bit n is factored in hours


def paillier_lane_bits(enc: HeParams) -> int:
    """Paillier packs quantized values into lanes of quant_bits plus room for the sum of every
    client: ceil(log2(clients)) bits more (BatchCrypt)."""
    clients = enc.clients or MAX_CLIENTS
    return enc.quant_bits + max(clients - 1, 0).bit_length()


def lane_bits(enc: HeParams) -> int:
    """BFV packs two values per slot, each in a lane this wide; the slot must stay below t."""
    return (enc.plain_modulus_bits - 1) // 2


def max_clients(enc: HeParams) -> int:
    """How many clients' updates one sum can hold without overflow."""
    if enc.scheme == "bfv":
        return int(2 ** (lane_bits(enc) - enc.quant_bits))
    if enc.scheme == "paillier":
        return int(2 ** (paillier_lane_bits(enc) - enc.quant_bits))
    if enc.scheme == "ckks":
        headroom = 2.0 ** (coeffs(enc)[0] - 1) / enc.scale  # |sum| must stay below this
        return math.floor(headroom / enc.clip - 1e-9)
    return 2**31


def check_encryption(enc: HeParams, clients: int) -> None:
    """Refuse a parameter set that is malformed or cannot hold the sum of `clients` updates."""
    if not enc.clip > 0:
        raise ConfigError(f"encryption.clip: must be positive, got {enc.clip}")
    if not 1 <= enc.processes <= 256:
        raise ConfigError(f"encryption.processes: must be 1..256, got {enc.processes}")
    if enc.scheme == "none":
        return
    if enc.backend not in BACKENDS:
        raise ConfigError(f"encryption.backend: {enc.backend!r} is not one of {list(BACKENDS)}")
    if enc.processes > 1 and (enc.scheme == "paillier" or enc.backend != "tenseal"):
        raise ConfigError(
            f"encryption.processes: {enc.processes}: only TenSEAL's ckks and bfv encrypt in worker "
            f"processes; set 1"
        )
    if enc.scheme == "paillier":
        _check_paillier(enc, clients)
        return
    n = enc.poly_modulus_degree
    if n not in MAX_COEFF_BITS:
        raise ConfigError(
            f"encryption.poly_modulus_degree: {n} is not one of {sorted(MAX_COEFF_BITS)}"
        )
    bits = coeffs(enc)
    if len(bits) < 2 or any(not 17 <= b <= 60 for b in bits):
        raise ConfigError(
            f"encryption.coeff_mod_bit_sizes: {list(bits)}: give at least two primes of 17..60 bits"
        )
    if sum(bits) > MAX_COEFF_BITS[n]:
        raise ConfigError(
            f"encryption.coeff_mod_bit_sizes: {sum(bits)} bits in all is more than the "
            f"{MAX_COEFF_BITS[n]} that poly_modulus_degree {n} allows at 128-bit security"
        )
    if enc.scheme == "ckks" and not 20 <= enc.scale_bits < bits[0]:
        raise ConfigError(
            f"encryption.scale_bits: {enc.scale_bits} must be at least 20 (precision) and below "
            f"the first prime's {bits[0]}"
        )
    if enc.scheme == "bfv":
        _check_bfv(enc, bits, clients)
    if clients > max_clients(enc):
        hint = (
            "lower quant_bits or raise plain_modulus_bits"
            if enc.scheme == "bfv"
            else f"lower clip ({enc.clip:g}) or scale_bits, or raise the first prime"
        )
        raise ConfigError(
            f"encryption: {enc.scheme} with these parameters holds the sum of at most "
            f"{max_clients(enc)} clients, the config has {clients}: {hint}"
        )


BACKENDS = ("tenseal", "seal")


def scheme_label(scheme: str, backend: str = "tenseal") -> str:
    """How reports name a run's encryption: none, ckks, bfv (TenSEAL), ckks/seal, bfv/seal
    (SEAL-Python), paillier."""
    return f"{scheme}/{backend}" if scheme in ("ckks", "bfv") and backend != "tenseal" else scheme


def _check_paillier(enc: HeParams, clients: int) -> None:
    low, high = PAILLIER_KEY_BITS
    if not (low <= enc.key_bits <= high and enc.key_bits % 256 == 0):
        raise ConfigError(
            f"encryption.key_bits: {enc.key_bits} must be a multiple of 256 from {low} to {high} "
            f"(2048 or more outside tests)"
        )
    if not 8 <= enc.quant_bits <= 32:
        raise ConfigError(f"encryption.quant_bits: {enc.quant_bits} must be 8..32 for paillier")
    if clients > (enc.clients or MAX_CLIENTS):
        raise ConfigError(
            f"encryption: paillier lanes with room for {enc.clients or MAX_CLIENTS} clients cannot "
            f"hold the sum of {clients}"
        )


def bfv_noise_margin(enc: HeParams, clients: int) -> float:
    """Bits of noise budget left after adding `clients` fresh ciphertexts: the data modulus, less t,
    less the fresh noise (about log2(n) - 5 bits, measured with SEAL's invariant_noise_budget: 6
    bits left fresh at n=4096, q=60, t=47), less half a bit per doubling of the clients
    (independent noises add like a random walk). Below 1 the sum may decrypt to garbage."""
    data_bits = sum(coeffs(enc)[:-1])
    fresh = data_bits - enc.plain_modulus_bits - (math.log2(enc.poly_modulus_degree) - 5)
    return fresh - 0.5 * math.log2(max(clients, 1))


def _check_bfv(enc: HeParams, bits: tuple[int, ...], clients: int) -> None:
    if not 8 <= enc.quant_bits < lane_bits(enc):
        raise ConfigError(
            f"encryption.quant_bits: {enc.quant_bits} must be 8 or more and below the lane of "
            f"{lane_bits(enc)} bits ((plain_modulus_bits - 1) // 2)"
        )
    t = batching_prime(enc.plain_modulus_bits, enc.poly_modulus_degree)
    if t <= 2 ** (2 * lane_bits(enc)):
        raise ConfigError(
            f"encryption.plain_modulus_bits: {enc.plain_modulus_bits} leaves no batching prime "
            f"above 2^{2 * lane_bits(enc)} for poly_modulus_degree {enc.poly_modulus_degree}"
        )
    margin = bfv_noise_margin(enc, clients)
    if margin < 1:
        raise ConfigError(
            f"encryption: bfv noise: {sum(bits[:-1])} data bits, t of {enc.plain_modulus_bits} "
            f"bits and {clients} clients leave {margin:.1f} bits of noise budget (need 1); lower "
            f"plain_modulus_bits or use a larger first prime"
        )


def batching_prime(bits: int, poly_degree: int) -> int:
    """The largest prime below 2^bits that is 1 mod 2n (BFV batching needs it)."""
    step = 2 * poly_degree
    k = (2**bits - 1) // step
    while k > 0 and not _is_prime(k * step + 1):
        k -= 1
    if k == 0:
        raise ConfigError(
            f"encryption.plain_modulus_bits: no batching prime below 2^{bits} "
            f"for degree {poly_degree}"
        )
    return int(k * step + 1)


def _is_prime(n: int) -> bool:
    """Miller-Rabin with fixed bases: exact below 3.3e24, far past any plain modulus here."""
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    if n < 2 or any(n % p == 0 for p in bases):
        return n in bases
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def coeff_primes(poly_degree: int, bit_sizes: tuple[int, ...]) -> tuple[int, ...]:
    """The primes of SEAL's CoeffModulus.Create(poly_degree, bit_sizes), which TenSEAL and
    SEAL-Python both call: for each size, the largest primes of exactly that many bits that are
    1 mod 2n, found downwards; where a size repeats, its first use takes the smallest of them."""
    factor = 2 * poly_degree
    found: dict[int, list[int]] = {}
    for size, count in Counter(bit_sizes).items():
        primes: list[int] = []
        value = ((1 << size) - 1) // factor * factor + 1
        while len(primes) < count and value > 1 << (size - 1):
            if _is_prime(value):
                primes.append(value)
            value -= factor
        if len(primes) < count:
            raise ConfigError(
                f"encryption.coeff_mod_bit_sizes: too few {size}-bit primes for "
                f"poly_modulus_degree {poly_degree}"
            )
        found[size] = primes
    return tuple(found[size].pop() for size in bit_sizes)


LIBRARY_NAMES = {"tenseal": "TenSEAL", "seal": "SEAL-Python", "paillier": "phe + gmpy2"}


def seeded_uplink(enc: HeParams) -> bool:
    """Whether clients send their fresh ciphertexts seeded (and adders sums as seed lists): asked
    for, and ckks or bfv (with either library)."""
    return enc.seeded and enc.scheme in ("ckks", "bfv")


def in_effect(enc: HeParams) -> dict[str, Any]:
    """The parameters a run encrypts with, every default resolved (run.json and summary.json):
    the library, the primes, scale, plain modulus, packing, values per ciphertext and how many
    clients' sums they hold. No key material: all of it follows from the config."""
    out: dict[str, Any] = {"scheme": enc.scheme, "clip": enc.clip}
    if enc.scheme == "none":
        return out
    if enc.scheme == "paillier":
        lane = paillier_lane_bits(enc)
        return out | {
            "library": LIBRARY_NAMES["paillier"],
            "key_bits": enc.key_bits,
            "quant_bits": enc.quant_bits,
            "lane_bits": lane,
            "values_per_ciphertext": slots(enc),
            "ciphertext_bytes": 2 * enc.key_bits // 8,
            "max_clients": max_clients(enc),
        }
    bits = coeffs(enc)
    out |= {
        "library": LIBRARY_NAMES[enc.backend],
        "backend": enc.backend,
        "poly_modulus_degree": enc.poly_modulus_degree,
        "coeff_mod_bit_sizes": list(bits),
        "coeff_modulus": list(coeff_primes(enc.poly_modulus_degree, bits)),
        # the special (last) prime never reaches the wire: a ciphertext holds the others
        "wire_primes": len(bits) - 1,
        "security_bits": 128,
        # clients' fresh ciphertexts go as c0 and the seed of c1
        "seeded": seeded_uplink(enc),
    }
    if seeded_uplink(enc):  # sums of at most this many seeded updates go on as seed lists
        out["seed_list_max"] = enc.seed_list_max
    if enc.scheme == "ckks":
        return out | {
            "scale_bits": enc.scale_bits,
            "scale": 2**enc.scale_bits,
            "slots_per_ciphertext": enc.poly_modulus_degree // 2,
            "values_per_ciphertext": slots(enc),
            "max_clients": max_clients(enc),
        }
    return out | {
        "plain_modulus": batching_prime(enc.plain_modulus_bits, enc.poly_modulus_degree),
        "plain_modulus_bits": enc.plain_modulus_bits,
        "quant_bits": enc.quant_bits,
        "lane_bits": lane_bits(enc),
        "slots_per_ciphertext": enc.poly_modulus_degree,
        "values_per_ciphertext": slots(enc),
        "max_clients": max_clients(enc),
    }


def describe(found: dict[str, Any]) -> str:
    """One line of `in_effect`'s record, for reports."""
    scheme = found.get("scheme")
    if scheme == "paillier":
        return (
            f"paillier {found['key_bits']}-bit n, lanes of {found['lane_bits']} bits, "
            f"{found['values_per_ciphertext']} values per ciphertext ({found['library']})"
        )
    if scheme not in ("ckks", "bfv"):
        return ""  # no encryption: nothing to describe
    ring = f"{scheme} n={found['poly_modulus_degree']} q={found['coeff_mod_bit_sizes']} bits"
    detail = (
        f"scale 2^{found['scale_bits']}"
        if scheme == "ckks"
        else f"t={found['plain_modulus']} ({found['quant_bits']}-bit values, 2 per slot)"
    )
    return (
        f"{ring}, {detail}, {found['values_per_ciphertext']} values per ciphertext "
        f"({found['library']})"
    )


def fingerprint(enc: HeParams) -> dict[str, object]:
    """What a context must have been made with to serve these parameters."""
    if enc.scheme == "paillier":
        return {"scheme": "paillier", "key_bits": enc.key_bits}
    fp: dict[str, object] = {
        "scheme": enc.scheme,
        "poly_modulus_degree": enc.poly_modulus_degree,
        "coeff_mod_bit_sizes": list(coeffs(enc)),
    }
    if enc.scheme == "bfv":
        fp["plain_modulus"] = batching_prime(enc.plain_modulus_bits, enc.poly_modulus_degree)
    if enc.backend != "tenseal":  # TenSEAL key folders keep the fingerprint they always had
        fp["backend"] = enc.backend
    return fp
