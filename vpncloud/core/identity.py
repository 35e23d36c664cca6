"""Node identity: Ed25519 key pair, trusted keys and ``genkey`` (spec section 5).

The private key in a config is the 32-byte Ed25519 *seed*, written in base62; a password is turned
into a seed with PBKDF2. Handshake messages do not carry public keys, only a 4-byte salt and
``SHA-256(public_key || salt)[:4]``; :meth:`Identity.find_trusted` resolves that to a trusted key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from . import base62
from .errors import ConfigError, DecodeError
from .primitives import Rng, ed25519_key, ed25519_public_key, pbkdf2_seed, sha256

__all__ = ["Identity", "genkey_text", "seed_from_password"]

_GENKEY_ATTENTION = (
    "Attention: Keep the private key secret and use only the public key on other nodes to establish trust."
)


def seed_from_password(password: str) -> bytes:
    """PBKDF2-HMAC-SHA256 seed of a password (salt ``vpncloudVPNCLOUDvpncl0udVpnCloud``, 4096 rounds)."""
    return pbkdf2_seed(password)


def _decode_key(text: str, what: str) -> bytes:
    # Keys whose first byte is 0x00 encode to fewer than 43 characters; we accept them by
    # left-padding (quirk 2/23) rather than failing like the original.
    try:
        return base62.decode_key(text)
    except DecodeError as exc:
        raise ConfigError(f"Failed to parse {what}: {exc}") from None


class Identity:
    """The node's key pair and the list of trusted public keys.

    The seed is secret: it never appears in ``repr``/``str``.
    """

    __slots__ = ("_key", "expiry", "public_key", "seed", "trusted_keys")

    def __init__(
        self, seed: bytes, trusted_keys: Iterable[bytes] = (), expiry: Mapping[bytes, float] | None = None
    ) -> None:
        if len(seed) != 32:
            raise ConfigError("Private key must be 32 bytes")
        self.seed = bytes(seed)
        self._key = ed25519_key(self.seed)
        self.public_key: bytes = self._key.public
        trusted = tuple(bytes(k) for k in trusted_keys)
        for key in trusted:
            if len(key) != 32:
                raise ConfigError("Trusted keys must be 32 bytes")
        # An empty list means "trust only the own key" (spec 5.1), so a shared password is enough.
        self.trusted_keys: tuple[bytes, ...] = trusted or (self.public_key,)
        #: Optional expiry of trusted keys: public key -> wall-clock time (Unix seconds) from which
        #: the key is no longer accepted. Not part of the original's config; the daemon loads it from
        #: the separate security file. The core never reads a clock: callers pass ``wall_now``.
        self.expiry: dict[bytes, float] = dict(expiry or {})

    @classmethod
    def from_config(
        cls,
        *,
        password: str | None = None,
        private_key: str | None = None,
        public_key: str | None = None,
        trusted_keys: Iterable[str] = (),
    ) -> Identity:
        """Build from config values (base62 strings); the private key wins over the password.

        Raises ``ConfigError`` with a clear message where the original panics.
        """
        if private_key:
            seed = _decode_key(private_key, "private key")
        elif password is not None and password != "":
            seed = seed_from_password(password)
        else:
            raise ConfigError("Either password or private key must be set in config or given as parameter")
        trusted = [_decode_key(k, "trusted public key") for k in trusted_keys]
        ident = cls(seed, trusted)
        if public_key:
            pub = _decode_key(public_key, "public key")
            if pub != ident.public_key:
                raise ConfigError("Keys rejected by crypto library: public key does not match private key")
        return ident

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature of ``data`` with the own seed."""
        return self._key.sign(data)

    def key_hash(self, salt: bytes) -> bytes:
        """``SHA-256(own public key || salt)[:4]`` (spec 5.3)."""
        return sha256(self.public_key + salt)[:4]

    def find_trusted(self, salt: bytes, hash4: bytes, wall_now: float | None = None) -> bytes | None:
        """First trusted key (in list order) whose salted hash equals ``hash4``, or None.

        With ``wall_now`` (Unix seconds, supplied by the caller), expired keys are skipped.
        """
        for key in self.trusted_keys:
            if sha256(key + salt)[:4] == hash4:
                if wall_now is not None and self.is_expired(key, wall_now):
                    continue
                return key
        return None

    def is_expired(self, key: bytes, wall_now: float) -> bool:
        """Whether ``key`` has an expiry and it has passed at wall-clock time ``wall_now``."""
        expires = self.expiry.get(key)
        return expires is not None and wall_now >= expires

    def with_expiry(self, expiry: Mapping[bytes, float]) -> Identity:
        """A copy of this identity with the given expiry map (keys not trusted are ignored)."""
        kept = {k: v for k, v in expiry.items() if k in self.trusted_keys}
        return Identity(self.seed, self.trusted_keys, kept)

    def __repr__(self) -> str:
        return (
            f"Identity(public_key={base62.encode(self.public_key)!r}, trusted_keys={len(self.trusted_keys)})"
        )

    __str__ = __repr__


def genkey_text(password: str | None, rng: Rng) -> str:
    """Exactly what ``vpncloud genkey [-p PASSWORD]`` prints (spec 5.2), including the final newline."""
    if password:
        seed = seed_from_password(password)
        public = ed25519_public_key(seed)
    else:
        # Redraw keys whose text form would lose a leading 0x00 byte: the original cannot parse
        # them (quirk 2), and our output must stay usable on original nodes too.
        while True:
            seed = rng.randbytes(32)
            public = ed25519_public_key(seed)
            if seed[0] and public[0]:
                break
    return f"Private key: {base62.encode(seed)}\nPublic key: {base62.encode(public)}\n\n{_GENKEY_ATTENTION}\n"
