"""Keystore: generated once, never replaced, private on disk, public keys derived correctly."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vpncloud.core.identity import Identity
from vpncloud.mesh.keystore import Keystore, KeystoreError, generate_seed


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ensure_creates_private_files_once(tmp_path: Path) -> None:
    store = Keystore(tmp_path / "keys")
    assert store.get("m", "a") is None
    first = store.ensure("m", "a")
    again = store.ensure("m", "a")
    assert first.private_key.get_secret_value() == again.private_key.get_secret_value()
    assert mode(tmp_path / "keys") == 0o700
    assert mode(tmp_path / "keys" / "m") == 0o700
    assert mode(store.path("m", "a")) == 0o600
    # no temporary files left behind
    assert sorted(p.name for p in (tmp_path / "keys" / "m").iterdir()) == ["a.key"]


def test_public_key_matches_the_core_identity(tmp_path: Path) -> None:
    pair = Keystore(tmp_path).ensure("m", "a")
    identity = Identity.from_config(
        private_key=pair.private_key.get_secret_value(), public_key=pair.public_key
    )
    assert identity.trusted_keys == (identity.public_key,)


def test_secret_is_masked_in_repr(tmp_path: Path) -> None:
    pair = Keystore(tmp_path).ensure("m", "a")
    assert pair.private_key.get_secret_value() not in repr(pair)
    assert pair.private_key.get_secret_value() not in str(pair)


def test_loose_permissions_are_refused(tmp_path: Path) -> None:
    store = Keystore(tmp_path)
    store.ensure("m", "a")
    os.chmod(store.path("m", "a"), 0o644)
    with pytest.raises(KeystoreError, match="too open"):
        store.get("m", "a")


def test_garbage_key_file_is_a_clear_error(tmp_path: Path) -> None:
    store = Keystore(tmp_path)
    store.ensure("m", "a")
    store.path("m", "a").write_text("not base62 !!!\n")
    with pytest.raises(KeystoreError, match="not a base62"):
        store.get("m", "a")


def test_generated_seeds_survive_base62(tmp_path: Path) -> None:
    # Keys starting with a zero byte lose it in base62 and the original refuses them: never generated.
    for _ in range(200):
        seed = generate_seed()
        assert seed[0] != 0


def test_promote_keeps_the_old_key(tmp_path: Path) -> None:
    store = Keystore(tmp_path)
    old = store.ensure("m", "a")
    new = store.ensure("m", "a", next_key=True)
    assert new.public_key != old.public_key
    store.promote("m", "a")
    assert store.get("m", "a") == new
    assert store.get("m", "a", next_key=True) is None
    assert (tmp_path / "m" / "a.retired.key").exists()
    with pytest.raises(KeystoreError):
        store.promote("m", "a")
    assert store.public_keys("m") == {"a": new.public_key}
