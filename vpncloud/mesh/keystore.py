"""Per-node Ed25519 keys, generated on the controller and kept in a keystore directory.

Layout: ``<keystore>/<mesh>/<node>.key`` holds the base62 seed (the original's ``private-key``);
``<node>.next.key`` is a key being rotated in. Directories are 0700 and files 0600 because the seed is
the node's identity. Seeds only ever leave this module as :class:`SecretStr`, so they are masked in
``repr`` and dumps; the plan and the logs only see public keys.

Nothing here overwrites an existing key: generating is "create if missing", written to a temporary
file and linked into place, so an interrupted apply or two concurrent runs never replace a key.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from vpncloud.core import base62
from vpncloud.core.primitives import ed25519_public_key

__all__ = ["ARCHIVE", "KeyPair", "Keystore", "KeystoreError", "generate_seed"]

#: Below each mesh's key directory: ``archive/<UTC date>/<file>`` keeps keys no node uses any more.
ARCHIVE = "archive"


class KeystoreError(Exception):
    """A key file is missing, unreadable, has loose permissions or does not decode."""


@dataclass(frozen=True)
class KeyPair:
    """A node's key: the secret seed (masked) and its public key (base62)."""

    private_key: SecretStr
    public_key: str


def generate_seed() -> bytes:
    """A random Ed25519 seed whose seed and public key both keep 43 base62 characters.

    The original cannot parse keys whose first byte is 0 (base62 drops it), so such keys are redrawn:
    the rendered configs must also work with the original binary.
    """
    while True:
        seed = os.urandom(32)
        if seed[0] and ed25519_public_key(seed)[0]:
            return seed


def _pair(seed_text: str, path: Path) -> KeyPair:
    try:
        seed = base62.decode_key(seed_text.strip())
    except ValueError:
        raise KeystoreError(f"{path}: not a base62 Ed25519 seed") from None
    return KeyPair(SecretStr(base62.encode(seed)), base62.encode(ed25519_public_key(seed)))


class Keystore:
    """Key files of every mesh, below one directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _dir(self, mesh: str) -> Path:
        return self.root / mesh

    def path(self, mesh: str, node: str, *, next_key: bool = False) -> Path:
        """File of a node's current (or rotating-in) key."""
        return self._dir(mesh) / (f"{node}.next.key" if next_key else f"{node}.key")

    def get(self, mesh: str, node: str, *, next_key: bool = False) -> KeyPair | None:
        """The stored key, or None when there is none yet."""
        path = self.path(mesh, node, next_key=next_key)
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            return None
        if mode & 0o077:
            raise KeystoreError(f"{path}: permissions {mode:o} are too open (want 600)")
        return _pair(path.read_text(encoding="ascii"), path)

    def ensure(self, mesh: str, node: str, *, next_key: bool = False) -> KeyPair:
        """The stored key, generating it first when missing (never replaces an existing key)."""
        existing = self.get(mesh, node, next_key=next_key)
        if existing is not None:
            return existing
        directory = self._dir(mesh)
        # The parents (e.g. .vpncloud/) are not secret; the keystore and mesh dirs are 0700.
        self.root.parent.mkdir(parents=True, exist_ok=True)
        for d in (self.root, directory):
            d.mkdir(mode=0o700, exist_ok=True)
            os.chmod(d, 0o700)
        path = self.path(mesh, node, next_key=next_key)
        tmp = directory / f".{path.name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(base62.encode(generate_seed()) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            # link() fails if the key appeared meanwhile: the first writer wins, nobody overwrites.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        pair = self.get(mesh, node, next_key=next_key)
        assert pair is not None
        return pair

    def promote(self, mesh: str, node: str) -> None:
        """Finish a rotation: the next key becomes current; the old one is kept as ``.retired``."""
        current = self.path(mesh, node)
        nxt = self.path(mesh, node, next_key=True)
        if not nxt.exists():
            raise KeystoreError(f"{nxt}: no key being rotated in")
        if current.exists():
            os.replace(current, self._dir(mesh) / f"{node}.retired.key")
        os.replace(nxt, current)

    def unused(self, mesh: str, nodes: set[str]) -> dict[str, str]:
        """Key files no node of the mesh uses: file name -> why (keys of removed nodes, retired keys)."""
        directory = self._dir(mesh)
        if not directory.is_dir():
            return {}
        found = {}
        for path in sorted(directory.glob("*.key")):
            node, _, kind = path.name[: -len(".key")].partition(".")
            if node not in nodes:
                found[path.name] = f"key of removed node {node}"
            elif kind == "retired":
                found[path.name] = f"retired key of {node} (replaced by a rotation)"
        return found

    def archive(self, mesh: str, filename: str, now: dt.datetime | None = None) -> Path:
        """Move one key file into ``archive/<UTC date>/``; never overwrites, never deletes."""
        source = self._dir(mesh) / filename
        day = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d")
        directory = self._dir(mesh) / ARCHIVE / day
        for d in (self._dir(mesh) / ARCHIVE, directory):
            d.mkdir(mode=0o700, exist_ok=True)
        target = directory / filename
        counter = 1
        while True:
            try:
                os.link(source, target)  # fails instead of replacing an archived key of the same day
                break
            except FileExistsError:
                counter += 1
                target = directory / f"{filename}.{counter}"
        source.unlink()
        return target

    def public_keys(self, mesh: str) -> dict[str, str]:
        """Public keys of every stored current key of a mesh (node -> base62)."""
        directory = self._dir(mesh)
        if not directory.is_dir():
            return {}
        result = {}
        for path in sorted(directory.glob("*.key")):
            name = path.name[: -len(".key")]
            if "." in name:
                continue
            pair = self.get(mesh, name)
            if pair is not None:
                result[name] = pair.public_key
        return result
