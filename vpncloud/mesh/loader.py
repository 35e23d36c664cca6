"""Load ``mesh.yaml`` with errors that name the file, the line and the field.

PyYAML's composer keeps a start mark on every node, so we compose the document ourselves, build the
plain data from the node tree (rejecting duplicate keys, which ``safe_load`` silently merges) and
remember the line of every path. A pydantic ``loc`` such as ``("nodes", 2, "vpn_address")`` is then
walked down the same tree to find the line. Input values are never echoed: they may be secrets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .acl import check_security
from .models import Mesh, MeshFile, Problem, check_mesh, check_meshes

__all__ = ["MeshError", "MeshErrorItem", "load_mesh", "load_mesh_text", "load_meshes"]


@dataclass(frozen=True)
class MeshErrorItem:
    """One problem in a mesh file."""

    file: str
    line: int | None  # 1-based
    field: str  # dotted path, "" for the whole document
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class MeshError(Exception):
    """The mesh description is invalid; ``items`` lists every problem found."""

    def __init__(self, items: Iterable[MeshErrorItem]) -> None:
        self.items = list(items)
        super().__init__("\n".join(str(i) for i in self.items))


class _Located:
    """Plain data plus a way to find the line of any path inside it."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def line_of(self, loc: tuple[str | int, ...]) -> tuple[int | None, str]:
        """Line of the deepest node along ``loc`` and the dotted field path that matched."""
        node = self.root
        line = node.start_mark.line + 1 if node is not None else None
        parts: list[str] = []
        for key in loc:
            if isinstance(node, yaml.MappingNode) and isinstance(key, str):
                for k, v in node.value:
                    if isinstance(k, yaml.ScalarNode) and k.value == key:
                        # A missing/invalid value sits on the key's line; that is where people look.
                        line = k.start_mark.line + 1
                        node = v
                        parts.append(key)
                        break
                else:
                    # The key is absent (missing field) or a pydantic-internal loc part (union tag).
                    if not key[:1].isupper() and "[" not in key:
                        parts.append(key)
                    break
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
                node = node.value[key]
                line = node.start_mark.line + 1
                parts.append(f"[{key}]")
            else:
                break
        field = ".".join(parts).replace(".[", "[")
        return line, field


def _construct(node: yaml.Node, file: str, path: str = "") -> Any:
    """Build plain data from a node tree, rejecting duplicate keys."""
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for k, v in node.value:
            key = _construct(k, file)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise MeshError(
                    [MeshErrorItem(file, k.start_mark.line + 1, "", "mapping keys must be scalars")]
                )
            if key in result:
                raise MeshError(
                    [MeshErrorItem(file, k.start_mark.line + 1, f"{path}{key}", f"duplicate key {key!r}")]
                )
            result[key] = _construct(v, file, f"{path}{key}.")
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, file, f"{path.rstrip('.')}[{i}].") for i, v in enumerate(node.value)]
    # Scalars: let the safe constructor resolve ints, bools, nulls exactly like safe_load.
    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)


def _compose(text: str, file: str) -> yaml.Node | None:
    try:
        loader = yaml.SafeLoader(text)
        try:
            return loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise MeshError([MeshErrorItem(file, line, "", f"invalid YAML: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise MeshError([MeshErrorItem(file, None, "", f"invalid YAML: {exc}")]) from None
    except RecursionError:
        raise MeshError([MeshErrorItem(file, None, "", "invalid YAML: nested too deeply")]) from None


def _problems_to_error(file: str, located: _Located, problems: Iterable[Problem]) -> MeshError:
    items = []
    for problem in problems:
        line, field = located.line_of(problem.loc)
        items.append(MeshErrorItem(file, line, field, problem.message))
    return MeshError(items)


def load_mesh_text(text: str, file: str = "<mesh>") -> Mesh:
    """Parse and validate a mesh description; raises :class:`MeshError` (never a traceback)."""
    return _load(text, file)[0]


def _load(text: str, file: str) -> tuple[Mesh, _Located]:
    root = _compose(text, file)
    located = _Located(root)
    if root is None:
        raise MeshError([MeshErrorItem(file, None, "", "the file is empty")])
    data = _construct(root, file)
    if not isinstance(data, dict):
        raise MeshError([MeshErrorItem(file, root.start_mark.line + 1, "", "the document must be a mapping")])
    try:
        mesh = MeshFile.model_validate(data)
    except ValidationError as exc:
        items: dict[tuple[int | None, str], list[str]] = {}
        for err in exc.errors(include_input=False, include_url=False):
            line, field = located.line_of(tuple(err["loc"]))
            message = err["msg"]
            if err["type"] == "extra_forbidden":
                message = "unknown field"
            messages = items.setdefault((line, field), [])
            if message not in messages:
                messages.append(message)
        raise MeshError(
            MeshErrorItem(file, line, field, "; ".join(msgs)) for (line, field), msgs in items.items()
        ) from None
    problems = check_mesh(mesh) + check_security(mesh, mesh.acl, mesh.key_expiry)
    if problems:
        raise _problems_to_error(file, located, problems)
    return mesh, located


def load_mesh(path: str | Path) -> Mesh:
    """Load one mesh file."""
    return load_meshes([path])[0]


def load_meshes(paths: Iterable[str | Path]) -> list[Mesh]:
    """Load several mesh files and check them against each other (ports and names per host)."""
    loaded: list[tuple[str, Mesh, _Located]] = []
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
