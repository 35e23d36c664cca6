"""Load ``mesh.yaml`` with errors that name the file, the line and the field.

The YAML reading, line lookup and error style are shared with the lab loader
(:mod:`vpncloud.sourcefile`); here are the mesh's own checks and the checks between meshes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pydantic import ValidationError

from vpncloud.sourcefile import (
    ErrorItem,
    InputError,
    Located,
    compose,
    construct,
    validation_items,
    wrong_kind,
)

from .acl import check_security
from .models import Mesh, MeshFile, Problem, check_mesh, check_meshes

__all__ = ["MeshError", "MeshErrorItem", "load_mesh", "load_mesh_text", "load_meshes"]


# One error style for every input file: the mesh loader's names are kept for its callers.
MeshErrorItem = ErrorItem


class MeshError(InputError):
    """The mesh description is invalid; ``items`` lists every problem found."""


def _problems_to_error(file: str, located: Located, problems: Iterable[Problem]) -> MeshError:
    items = []
    for problem in problems:
        line, field = located.line_of(problem.loc)
        items.append(MeshErrorItem(file, line, field, problem.message))
    return MeshError(items)


def load_mesh_text(text: str, file: str = "<mesh>") -> Mesh:
    """Parse and validate a mesh description; raises :class:`MeshError` (never a traceback)."""
    return _load(text, file)[0]


def _load(text: str, file: str) -> tuple[Mesh, Located]:
    try:
        root = compose(text, file)
        if root is None:
            raise MeshError([MeshErrorItem(file, None, "", "the file is empty")])
        data = construct(root, file)
    except InputError as exc:
        raise MeshError(exc.items) from None
    located = Located(root)
    if not isinstance(data, dict):
        raise MeshError([MeshErrorItem(file, root.start_mark.line + 1, "", "the document must be a mapping")])
    wrong = wrong_kind(file, data, "mesh")
    if wrong is not None:
        raise MeshError(wrong.items)
    try:
        mesh = MeshFile.model_validate(data)
    except ValidationError as exc:
        raise MeshError(validation_items(exc, MeshFile, located, file)) from None
    problems = check_mesh(mesh) + check_security(mesh, mesh.acl, mesh.key_expiry)
    if problems:
        raise _problems_to_error(file, located, problems)
    return mesh, located


def load_mesh(path: str | Path) -> Mesh:
    """Load one mesh file."""
    return load_meshes([path])[0]


def load_meshes(paths: Iterable[str | Path]) -> list[Mesh]:
    """Load several mesh files and check them against each other (ports and names per host)."""
    loaded: list[tuple[str, Mesh, Located]] = []
    for path in paths:
        file = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise MeshError([MeshErrorItem(file, None, "", f"cannot read: {exc.strerror}")]) from None
        except UnicodeDecodeError:
            raise MeshError([MeshErrorItem(file, None, "", "not UTF-8 text")]) from None
        mesh, located = _load(text, file)
        loaded.append((file, mesh, located))
    cross = check_meshes([m for _, m, _ in loaded])
    if cross:
        items: list[MeshErrorItem] = []
        for index, problem in cross:
            file, _, located = loaded[index]
            items.extend(_problems_to_error(file, located, [problem]).items)
        raise MeshError(items)
    return [m for _, m, _ in loaded]
