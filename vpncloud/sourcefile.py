"""Input files of the orchestrator and the lab: YAML with line numbers, one error style, file kinds.

Both loaders (``mesh.yaml`` in :mod:`vpncloud.mesh.loader`, lab files in :mod:`vpncloud.lab.lab`) read
their YAML here and turn problems into :class:`ErrorItem` s, printed by every command as::

    error: FILE:LINE: nodes[0].underlay: message

PyYAML's composer keeps a start mark on every node, so we compose the document ourselves, build the
plain data from the node tree (rejecting duplicate keys, which ``safe_load`` silently merges) and
remember the line of every path. A pydantic ``loc`` such as ``("nodes", 2, "vpn_address")`` is then
walked down the same tree to find the line. Input values are echoed only where they cannot be secrets
(network fields); any other field may hold a password or a key.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, get_args

import yaml
from pydantic import BaseModel, ValidationError
from rich.console import Console

__all__ = [
    "ErrorItem",
    "FileKind",
    "InputError",
    "Located",
    "compose",
    "construct",
    "error_lines",
    "file_kind",
    "print_errors",
    "usage_error",
    "validation_items",
    "wrong_kind",
]

#: The prefix of every error line of the orchestrator and lab commands.
PREFIX = "error: "


@dataclass(frozen=True)
class ErrorItem:
    """One problem in an input file; ``str()`` is ``FILE:LINE: FIELD: MESSAGE``, unknown parts left out."""

    file: str  # "" when the message names the file itself
    line: int | None  # 1-based
    field: str  # bracket path (nodes[0].underlay), "" for the whole document
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.file and self.line else self.file
        return ": ".join(part for part in (where, self.field, self.message) if part)


class InputError(Exception):
    """An input file is invalid; ``items`` lists every problem found."""

    def __init__(self, items: Iterable[ErrorItem]) -> None:
        self.items = list(items)
        super().__init__("\n".join(str(i) for i in self.items))


def error_lines(errors: Iterable[str]) -> list[str]:
    """The lines every command prints on stderr: each error's first line gets the prefix; the lines
    after it (a node's log tail, tool output) are its details and stay as they are."""
    lines = []
    for error in errors:
        first, *details = error.splitlines() or [""]
        lines.append(PREFIX + first)
        lines.extend(details)
    return lines


def print_errors(console: Console, errors: Iterable[str]) -> None:
    """Print errors (see :func:`error_lines`), never wrapped or marked up: one problem, one line."""
    for line in error_lines(errors):
        console.print(line, style="red", highlight=False, markup=False, soft_wrap=True)


def usage_error(parser: argparse.ArgumentParser, message: str, status: int) -> NoReturn:
    """argparse's usage error in the commands' one error style."""
    parser.print_usage(sys.stderr)
    parser.exit(status, f"{PREFIX}{parser.prog}: {message}\n")


class Located:
    """A composed YAML tree that finds the line of any path inside it."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def line_of(self, loc: tuple[str | int, ...]) -> tuple[int | None, str]:
        """Line of the deepest node along ``loc`` and the bracket field path that matched."""
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
                    if not _internal(key):
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


def _internal(key: str | int) -> bool:
    """Loc parts pydantic adds for unions and validators ('IPv4Network', 'function-after[...]')."""
    return isinstance(key, str) and (key[:1].isupper() or "[" in key)


def construct(node: yaml.Node, file: str, path: str = "") -> Any:
    """Build plain data from a node tree, rejecting duplicate keys."""
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for k, v in node.value:
            key = construct(k, file)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise InputError([ErrorItem(file, k.start_mark.line + 1, "", "mapping keys must be scalars")])
            if key in result:
                raise InputError(
                    [ErrorItem(file, k.start_mark.line + 1, f"{path}{key}", f"duplicate key {key!r}")]
                )
            result[key] = construct(v, file, f"{path}{key}.")
        return result
    if isinstance(node, yaml.SequenceNode):
        return [construct(v, file, f"{path.rstrip('.')}[{i}].") for i, v in enumerate(node.value)]
    # Scalars: let the safe constructor resolve ints, bools, nulls exactly like safe_load.
    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)


def compose(text: str, file: str) -> yaml.Node | None:
    """The YAML node tree of ``text``; :class:`InputError` with the line for invalid YAML."""
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
        raise InputError([ErrorItem(file, line, "", f"invalid YAML: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise InputError([ErrorItem(file, None, "", f"invalid YAML: {exc}")]) from None
    except RecursionError:
        raise InputError([ErrorItem(file, None, "", "invalid YAML: nested too deeply")]) from None


def validation_items(
    exc: ValidationError, model: type[BaseModel], located: Located, file: str
) -> list[ErrorItem]:
    """pydantic errors as items: one per field, unknown keys with a 'did you mean', no secret values."""
    found: dict[tuple[int | None, str], list[str]] = {}
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        line, field = located.line_of(loc)
        message = _message(err, model, loc)
        messages = found.setdefault((line, field), [])
        if message not in messages:
            messages.append(message)
    items = []
    for (line, field), messages in found.items():
        # A union (IPv4 | IPv6) fails once per member; the host-bits hint says it for both.
        hint = [m for m in messages if "host bits" in m]
        items.append(ErrorItem(file, line, field, "; ".join(hint or messages)))
    return items


_NETWORK_ERRORS = {"ip_v4_network", "ip_v6_network", "ip_any_network"}


def _message(err: Any, model: type[BaseModel], loc: tuple[str | int, ...]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        known = known_keys(model, loc[:-1])
        close = difflib.get_close_matches(key, known, n=1)
        if close:
            return f"unknown key {key!r}; did you mean {close[0]!r}?"
        return f"unknown key {key!r}" + (f" (known keys: {', '.join(known)})" if known else "")
    if kind in _NETWORK_ERRORS and isinstance(err.get("input"), str):
        hint = host_bits_hint(err["input"])
        if hint:
            return hint
    message = str(err["msg"])
    # pydantic's "Value error, " tells the reader nothing; our validators' messages stand alone.
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


# Letters, digits, '-' (and '_', which inventories and /etc/hosts accept) between dots, 1-63 each.
_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def host_problem(value: str) -> str | None:
    """Why ``value`` is neither an IP address nor a host name; None when it is one of them.

    A name whose last label is a number was meant as an IPv4 address (``10.98.0.300``): resolvers would
    try it as a name and fail only at apply time, on the node.
    """
    if ":" in value:
        try:
            ipaddress.IPv6Address(value)
            return None
        except ValueError:
            return f"{value} is not a valid IPv6 address"
    labels = value.removesuffix(".").split(".")
    if labels[-1].isdigit():
        try:
            ipaddress.IPv4Address(value)
            return None
        except ValueError:
            return f"{value} is not a valid IPv4 address (four numbers 0-255)"
    if len(value) > 253 or not all(_LABEL.match(label) for label in labels):
        return f"{value!r} is neither an IP address nor a host name (labels of letters, digits and '-')"
    return None


def host_port_problem(value: str, *, port_required: bool) -> str | None:
    """Like :func:`host_problem` for ``HOST``, ``HOST:PORT``, ``IPV6`` or ``[IPV6]:PORT``."""
    host, port = value, None
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest and not rest.startswith(":"):
            return f"{value!r} is not HOST:PORT or [IPV6]:PORT"
        port = rest[1:] if rest else None
    elif value.count(":") == 1:
        host, port = value.split(":")
    if port is None and port_required:
        return f"{value!r} has no port (HOST:PORT)"
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        return f"port {port!r} of {value!r} is not a number from 1 to 65535"
    return host_problem(host) if host else f"{value!r} has no host"


def host_bits_hint(text: str) -> str | None:
    """'10.1.0.5/24 has host bits set; did you mean 10.1.0.0/24?' when that is what is wrong."""
    try:
        ipaddress.ip_network(text, strict=True)
        return None
    except ValueError:
        pass
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    return f"{text} has host bits set; did you mean {network}?"


def known_keys(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """The keys the model accepts at ``loc`` (as spelled in files: aliases where set)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return []
        if isinstance(part, int) or _internal(part):
            continue
        field = next(
            (f for name, f in current.model_fields.items() if part in (name, f.alias)),
            None,
        )
        if field is None:
            continue  # a key of a free mapping (dict[str, Model]): same model below
        current = _model_in(field.annotation)
    if current is None:
        return []
    return [f.alias or name for name, f in current.model_fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside Optional[...], list[...], dict[..., ...] or a union, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


# --- what kind of file is this ----------------------------------------------------------------------

FileKind = Literal["mesh", "lab", "plan"]

#: Top-level keys that only one kind of file has, checked in this order: a saved plan has a
#: ``mesh`` key too (the mesh's name).
_MARKS: dict[FileKind, frozenset[str]] = {
    "plan": frozenset({"inputs_hash", "format_version"}),
    "mesh": frozenset({"mesh"}),
    "lab": frozenset({"underlay", "common"}),
}

_DESCRIPTION: dict[FileKind, tuple[str, str]] = {
    "mesh": ("a mesh description", "vpncloud plan {file}` or `vpncloud apply {file}"),
    "lab": ("a lab file (original-format node configs)", "vpncloud lab up {file}"),
    "plan": ("a saved plan", "vpncloud apply {file}"),
}


def file_kind(data: object) -> FileKind | None:
    """Which kind of input ``data`` (a parsed document) is, judged by its top-level keys only."""
    if not isinstance(data, dict):
        return None
    keys = {k for k in data if isinstance(k, str)}
    for kind, marks in _MARKS.items():
        if keys & marks:
            return kind
    return None


def wrong_kind(file: str, data: object, expected: FileKind) -> InputError | None:
    """One error naming the file's kind and the command that takes it, if it is not ``expected``."""
    kind = file_kind(data)
    if kind is None or kind == expected:
        return None
    what, command = _DESCRIPTION[kind]
    message = f"{file} is {what}, not {_DESCRIPTION[expected][0]}: use `{command.format(file=file)}`"
    return InputError([ErrorItem("", None, "", message)])
