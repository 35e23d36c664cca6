"""The daemon's separate security file: ACL policy and trusted-key expiry (issue 10).

The original's config file rejects unknown keys, so these settings live in their own file, by default
``/etc/vpncloud/<NAME>.security.yaml`` next to ``<NAME>.net`` (written by ``vpncloud apply``), or the
path given with ``--security-file FILE``. Format (YAML or JSON)::

    version: 1
    acl:                      # optional; absent = allow everything (the original's behaviour)
      rules:
        - {src: [10.99.0.1/32], dst: [10.99.0.2/32], proto: tcp, ports: [22]}
      allow_non_ip: true
    key_expiry:               # optional: base62 public key -> Unix time (seconds) it stops being trusted
      AbCd...: 1801234567
    relay:                    # optional (issue 22, docs/relays.md); absent = no relays (the original's)
      offer: true             # forward for peers of ours that cannot reach each other
      use: true               # reach such peers through a relay
      at_once: true           # the plan knows direct fails (symmetric NAT): no 20 s wait for it;
                              # or a list of node ids (32 hex digits): for those peers only
      pair_rate: 1000000      # bytes/s per relayed pair, and for all pairs together
      total_rate: 8000000
      max_pairs: 64

:func:`load_security_file` raises ``ConfigError`` with one clear line for every problem.
:func:`apply_security` installs the result into a running :class:`~vpncloud.core.node.Node`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vpncloud.core import base62
from vpncloud.core.acl import AclPolicy
from vpncloud.core.errors import ConfigError, DecodeError
from vpncloud.core.relay import RelayConfig
from vpncloud.lazy import LazyModule

if TYPE_CHECKING:
    import yaml
else:
    # PyYAML (about 1.5 MB of RSS) only when a security file is read
    yaml = LazyModule("yaml")

__all__ = ["Security", "apply_security", "default_path", "load_security_file", "parse_security"]


@dataclass
class Security:
    acl: AclPolicy | None = None
    key_expiry: dict[bytes, float] = field(default_factory=dict)
    relay: RelayConfig | None = None


def default_path(config_file: str | None) -> Path | None:
    """``/etc/vpncloud/NAME.net`` -> ``/etc/vpncloud/NAME.security.yaml``."""
    if not config_file:
        return None
    p = Path(config_file)
    return p.with_name(f"{p.stem}.security.yaml")


def parse_security(data: Any, source: str = "security file") -> Security:
    if data is None:
        return Security()
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a mapping with 'acl' and/or 'key_expiry'")
    unknown = set(data) - {"version", "acl", "key_expiry", "relay"}
    if unknown:
        raise ConfigError(f"{source}: unknown keys {', '.join(sorted(map(str, unknown)))}")
    if data.get("version", 1) != 1:
        raise ConfigError(f"{source}: unsupported version {data.get('version')!r} (expected 1)")
    sec = Security()
    if data.get("acl") is not None:
        try:
            sec.acl = AclPolicy.from_dict(data["acl"])
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    raw = data.get("key_expiry") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: 'key_expiry' must map public keys to Unix times")
    for key, when in raw.items():
        try:
            public = base62.decode_key(str(key))
        except DecodeError as exc:
            raise ConfigError(f"{source}: invalid public key in key_expiry: {exc}") from None
        if not isinstance(when, (int, float)) or isinstance(when, bool):
            raise ConfigError(f"{source}: expiry of a key must be a Unix time in seconds")
        sec.key_expiry[public] = float(when)
    if data.get("relay") is not None:
        sec.relay = _parse_relay(data["relay"], source)
    return sec


_RELAY_RATES = ("pair_rate", "total_rate")


def _parse_relay(raw: Any, source: str) -> RelayConfig:
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: 'relay' must be a mapping (offer, use, pair_rate, total_rate, max_pairs)"
        )
    unknown = set(raw) - {"offer", "use", "at_once", "max_pairs", *_RELAY_RATES}
    if unknown:
        raise ConfigError(f"{source}: unknown keys in 'relay': {', '.join(sorted(map(str, unknown)))}")
    cfg = RelayConfig()
    at_once = raw.get("at_once", False)
    if isinstance(at_once, list):
        cfg.at_once = frozenset(_node_id(v, source) for v in at_once)
    elif not isinstance(at_once, bool):
        raise ConfigError(f"{source}: relay at_once must be true, false or a list of node ids")
    else:
        cfg.at_once = at_once
    for key in ("offer", "use"):
        value = raw.get(key, False)
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: relay {key} must be true or false")
        setattr(cfg, key, value)
    for key in (*_RELAY_RATES, "max_pairs"):
        if key not in raw:
            continue
        value = raw[key]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{source}: relay {key} must be a positive integer")
        setattr(cfg, key, float(value) if key in _RELAY_RATES else value)
    return cfg


def _node_id(value: Any, source: str) -> bytes:
    try:
        node_id = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        node_id = b""
    if len(node_id) != 16:
        raise ConfigError(f"{source}: relay at_once: {value!r} is no node id (32 hex digits)")
    return node_id


def load_security_file(path: str | Path, *, required: bool = True) -> Security:
    """Read and check the file; a missing optional file means "nothing configured"."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ConfigError(f"Security file {p} does not exist") from None
        return Security()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"Failed to read security file {p}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"Security file {p} is not valid YAML{where}") from None
    except RecursionError:
        raise ConfigError(f"Security file {p} is nested too deeply") from None
    return parse_security(data, str(p))


def apply_security(node: Any, sec: Security, wall_now: float | None = None) -> None:
    """Install ACL and key expiry into a running node (startup and SIGHUP)."""
    node.set_acl(sec.acl)
    identity = node.crypto.identity
    node.crypto.identity = identity.with_expiry(sec.key_expiry)
    node.set_wall_time(time.time() if wall_now is None else wall_now)
    node.set_relays(sec.relay)
