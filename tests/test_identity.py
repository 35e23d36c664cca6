"""Identity keys, genkey output and key-hash lookup (spec 5, 22.3)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from vpncloud.core import base62
from vpncloud.core.errors import ConfigError
from vpncloud.core.identity import Identity, genkey_text, seed_from_password
from vpncloud.core.primitives import ed25519_verify, sha256

GENKEY = Path(__file__).parent / "fixtures" / "vectors" / "genkey.txt"

# spec 22.3: password, seed hex, private base62, public hex, public base62
KEY_VECTORS = [
    (
        "test",
        "67d20409c97fb9cc56119343f183c0047b47f22251a8a04bd8936ad85bb8e24d",
        "OcNT14Czd82FN9R7Bms8WW0ZX50TO7SoA99yGK2Rmyz",
        "6b36b29a19d4408c1aa5f8c146c15f1b91d1ede28ace5aec7387b7954c7c7ab3",
        "PQGYPnaB8PV2qWtxGtN9wibSKzYbSwbQh1s9b5syjch",
    ),
    (
        "test123",
        "13410c5dff8475e210eaf3e6033fadd825784c69e4edb0c1a1a2f579e8545744",
        "4Z4hQYvFJcoFLWDFkphlJhGwOGHoqmOFYreQmtstlqe",
        "8b0f3d15920588dcbcc8f963e87960d3639157d5513cc4b151d493be02bc8073",
        "WyT2TWsbgHV4PIHPXUpSuK42aIJwibhrfTihs9x6fA3",
    ),
    (
        "mysecret",
        "b452865c57aa178a2b51a203bc3c76ba4364a54161fb7a1674e36784503f4b10",
        "gl7NxDMlseGFwPinpMcAmi4zwJWFV9WqqfDld3Tz2Lg",
        "2fcc51a24392165b123ad857fd6e206f9d87ff0f2531ebbf113b4464aa40a29f",
        "BKjSRllQbxo8m6ooLv7WvOphbbq8WJsYzt55OS4UQWd",
    ),
    (
        "anothersecret",
        "8aa3862d9960a760238f64d0f3024a83593420f00234d6fff04c3299dc856b04",
        "WsHVHRh80aMh8eQ6Lyqp1EMX9yu9WUT6iEuWFN1U4KS",
        "568c397d419a4affc2c807c8ce210f3ad19d982d93bbd53b6fa1543a02ce81ef",
        "KWQwMEjE1rYGL9AO1MkBWXcCkopsi80HT8gAHfANUQZ",
    ),
]


def _genkey_runs() -> list[tuple[str | None, str]]:
    """(password or None for random runs, exact stdout) from the captured genkey.txt."""
    runs = []
    text = GENKEY.read_text()
    for block in re.split(r"^\$ ", text, flags=re.M)[1:]:
        command, _, output = block.partition("\n")
        m = re.search(r"genkey -p (\S+)", command)
        runs.append((m.group(1) if m else None, output.rstrip("\n") + "\n"))
    return runs


class FixedRng:
    """An rng that returns given byte strings in order (to replay a random genkey run)."""

    def __init__(self, *values: bytes) -> None:
        self.values = list(values)

    def randbytes(self, n: int) -> bytes:
        value = self.values.pop(0)
        assert len(value) == n
        return value


@pytest.mark.parametrize(("password", "seed", "priv", "pub", "pub62"), KEY_VECTORS)
def test_key_vectors(password: str, seed: str, priv: str, pub: str, pub62: str) -> None:
    assert seed_from_password(password).hex() == seed
    ident = Identity.from_config(password=password)
    assert ident.seed.hex() == seed
    assert base62.encode(ident.seed) == priv
    assert ident.public_key.hex() == pub
    assert base62.encode(ident.public_key) == pub62
    # the same identity from the explicit private key (and a consistent public key)
    other = Identity.from_config(private_key=priv, public_key=pub62)
    assert other.public_key == ident.public_key


def test_genkey_file_covers_all_runs() -> None:
    runs = _genkey_runs()
    assert len(runs) == 7
    assert sum(1 for p, _ in runs if p is None) == 2


@pytest.mark.parametrize(("password", "expected"), _genkey_runs())
def test_genkey_text_byte_exact(password: str | None, expected: str) -> None:
    if password is not None:
        assert genkey_text(password, FixedRng()) == expected
    else:
        seed62 = re.search(r"Private key: (\S+)", expected)
        assert seed62 is not None
        assert genkey_text(None, FixedRng(base62.decode_key(seed62.group(1)))) == expected


def test_genkey_random_redraws_leading_zero_keys() -> None:
    # a seed starting with 0x00 would print a 42-char key the original cannot parse (quirk 2)
    good = bytes.fromhex("67d20409c97fb9cc56119343f183c0047b47f22251a8a04bd8936ad85bb8e24d")
    text = genkey_text(None, FixedRng(b"\x00" + good[1:], good))
    assert "OcNT14Czd82FN9R7Bms8WW0ZX50TO7SoA99yGK2Rmyz" in text


def test_genkey_random_is_random() -> None:
    a, b = genkey_text(None, random.Random(1)), genkey_text(None, random.Random(2))
    assert a != b
    assert a.startswith("Private key: ")


def test_trusted_keys_default_to_own_key() -> None:
    ident = Identity.from_config(password="test")
    assert ident.trusted_keys == (ident.public_key,)
    other = Identity.from_config(password="x", trusted_keys=[KEY_VECTORS[0][4]])
    assert other.trusted_keys == (bytes.fromhex(KEY_VECTORS[0][3]),)  # own key NOT added


def test_key_hash_and_find_trusted() -> None:
    keys = [v[4] for v in KEY_VECTORS]
    ident = Identity.from_config(password="test", trusted_keys=keys)
    salt = bytes.fromhex("90c3e723")
    # plain.json PING #0: salt 90c3e723 -> key hash ffcad7a1 for the "test" key
    assert Identity.from_config(password="test").key_hash(salt).hex() == "ffcad7a1"
    for _password, _seed, _priv, pub, _ in KEY_VECTORS:
        key = bytes.fromhex(pub)
        assert ident.find_trusted(salt, sha256(key + salt)[:4]) == key
    assert ident.find_trusted(salt, b"\x00\x00\x00\x00") is None
    # SHA-256(salt || key) is the wrong order and must not match
    key0 = bytes.fromhex(KEY_VECTORS[0][3])
    assert ident.find_trusted(salt, sha256(salt + key0)[:4]) != key0


def test_sign_verifies() -> None:
    ident = Identity.from_config(password="test")
    assert ed25519_verify(ident.public_key, ident.sign(b"abc"), b"abc")


def test_secret_not_in_repr() -> None:
    ident = Identity.from_config(password="test")
    for text in (repr(ident), str(ident)):
        assert "OcNT14Czd82FN9R7Bms8WW0ZX50TO7SoA99yGK2Rmyz" not in text
        assert ident.seed.hex() not in text
        assert "PQGYPnaB8PV2qWtxGtN9wibSKzYbSwbQh1s9b5syjch" in text


def test_leading_zero_key_accepted() -> None:
    # a seed with a leading 0x00 byte encodes to fewer than 43 characters (quirk 2/23)
    seed = b"\x00" + bytes(range(1, 32))
    text = base62.encode(seed)
    assert len(text) < 43
    ident = Identity.from_config(private_key=text)
    assert ident.seed == seed
    pub_text = base62.encode(ident.public_key)
    assert Identity.from_config(private_key=text, public_key=pub_text).seed == seed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "Either password or private key"),
        ({"password": ""}, "Either password or private key"),
        ({"private_key": "not+base62"}, "private key"),
        ({"private_key": "z" * 50}, "private key"),
        ({"password": "test", "trusted_keys": ["abc!"]}, "trusted public key"),
        ({"password": "test", "trusted_keys": ["z" * 50]}, "trusted public key"),
        (
            {"private_key": KEY_VECTORS[0][2], "public_key": KEY_VECTORS[1][4]},
            "does not match",
        ),
    ],
)
def test_bad_keys_are_config_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Identity.from_config(**kwargs)  # type: ignore[arg-type]


def test_private_key_wins_over_password() -> None:
    ident = Identity.from_config(password="test", private_key=KEY_VECTORS[1][2])
    assert ident.public_key.hex() == KEY_VECTORS[1][3]
