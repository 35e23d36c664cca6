"""The last applied state of a mesh: what ``plan`` diffs against.

``<state_dir>/<mesh>.state.json`` holds, per resource address (``node.<name>``, ``hosts.<mesh>``),
the flattened attributes that were applied. Secrets are stored as digests only (``{"sensitive":
...}``), so the state file reveals nothing even though it sits next to the configs. ``serial`` grows
with every write; a saved plan remembers it, which is how ``apply PLANFILE`` notices a stale plan.

Writes are atomic (temporary file + rename) so an interrupted apply leaves either the old or the new
state, and the next apply converges from there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .render import Sensitive

__all__ = [
    "MeshState",
    "RotationProgress",
    "StateError",
    "decode_attrs",
    "encode_attrs",
    "load_state",
    "save_state",
]

FORMAT = 1


class StateError(Exception):
    """The state file exists but cannot be read."""


class RotationProgress(BaseModel):
    """A key rotation that has started: which node, and the last completed phase."""

    model_config = ConfigDict(extra="forbid")

    node: str = Field(description="Node whose key is being rotated.")
    phase: int = Field(default=0, description="Last completed phase (0 = none yet, 3 = done).")


class MeshState(BaseModel):
    """What was applied last."""

    model_config = ConfigDict(extra="forbid")

    format: int = Field(default=FORMAT, description="State file format version.")
    mesh: str = Field(description="Mesh name.")
    serial: int = Field(default=0, description="Incremented on every write.")
    target: str | None = Field(default=None, description="Target of the last apply (lab, ansible).")
    lab_dir: str | None = Field(
        default=None, description="Lab state root of the last apply (target lab), where refresh reads."
    )
    resources: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Applied attributes per resource address (secrets as digests)."
    )
    rotation: RotationProgress | None = Field(default=None, description="Key rotation in progress.")


def encode_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Attributes as JSON: :class:`Sensitive` becomes ``{"sensitive": digest}``."""

    def enc(value: Any) -> Any:
        if isinstance(value, Sensitive):
            return {"sensitive": value.digest}
        if isinstance(value, list):
            return [enc(v) for v in value]
        return value

    return {k: enc(v) for k, v in attrs.items()}


def decode_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`encode_attrs`."""

    def dec(value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"sensitive"}:
            return Sensitive(value["sensitive"])
        if isinstance(value, list):
            return [dec(v) for v in value]
        return value

    return {k: dec(v) for k, v in attrs.items()}


def state_path(state_dir: str | Path, mesh: str) -> Path:
    """File holding a mesh's state."""
    return Path(state_dir) / f"{mesh}.state.json"


def load_state(state_dir: str | Path, mesh: str) -> MeshState:
    """The mesh's state, or an empty one when nothing was applied yet."""
    path = state_path(state_dir, mesh)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return MeshState(mesh=mesh)
    except OSError as exc:
        raise StateError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        state = MeshState.model_validate_json(text)
    except ValueError as exc:
        raise StateError(f"{path}: not a valid state file ({exc.__class__.__name__})") from None
    if state.format != FORMAT:
        raise StateError(f"{path}: unsupported state format {state.format}")
    return state


def save_state(state_dir: str | Path, state: MeshState) -> MeshState:
    """Write the state atomically with the next serial; returns what was written."""
    directory = Path(state_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    written = state.model_copy(update={"serial": state.serial + 1})
    path = state_path(directory, state.mesh)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(written.model_dump_json(indent=2) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return written
