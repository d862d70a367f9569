"""Reading lightspeed-stack.yaml: YAML with line numbers, `${env.VAR}` and `${file:PATH}`."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from lcore_core.errors import ConfigError

KeyPath = tuple[str | int, ...]

# ${env.NAME}, ${env.NAME:=default}, ${file:/path/to/secret}
_SUBST = re.compile(r"\$\{(?:env\.(?P<var>[A-Za-z_][A-Za-z0-9_]*)(?::=(?P<default>[^}]*))?"
                    r"|file:(?P<file>[^}]+))\}")


# Values handed to Llama Stack as they are written: their ${env.X} references are left for
# Llama Stack to resolve when it starts (so a secret stays a reference in the run.yaml LCore
# writes, and Llama Stack's own forms such as ${env.X:+value} keep working).
VERBATIM: tuple[KeyPath, ...] = (
    ("llama_stack", "config", "native_override"),
    ("ogx", "config", "native_override"),
    ("inference", "providers", "*", "extra"),
)


def _verbatim(path: KeyPath) -> bool:
    return any(len(path) == len(p) and all(w == "*" or w == k for w, k in zip(p, path,
                                                                                strict=True))
               for p in VERBATIM)


def dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "<root>"


class Document:
    """A parsed YAML file: plain data plus the line of every key."""

    def __init__(self, data: Any, lines: dict[KeyPath, int], file: str) -> None:
        self.data = data
        self.lines = lines
        self.file = file

    def line_of(self, path: KeyPath) -> int:
        """Line of `path`, or of its nearest ancestor present in the file (1 for the top)."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return 1

    def error(self, path: KeyPath, message: str, *, at: KeyPath | None = None) -> ConfigError:
        """An error about `path`, reported at the line of `at` (default: of `path`)."""
        line = self.line_of(path if at is None else at)
        return ConfigError(message, file=self.file, line=line, key=dotted(path))


def read_document(path: str | Path, *, text: str | None = None) -> Document:
    file = str(path)
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError("configuration file not found", file=file) from None
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file: {exc.strerror}",
                              file=file) from None
    try:
        raw = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        context = f" ({exc.context})" if exc.context else ""
        raise ConfigError(f"invalid YAML: {exc.problem}{context}", file=file,
                          line=line) from None
    if raw is None:
        raw = CommentedMap()
    if not isinstance(raw, dict):
        raise ConfigError("the top level must be a mapping of sections", file=file, line=1,
                          key="<root>")
    lines: dict[KeyPath, int] = {}
    doc = Document(None, lines, file)
    doc.data = _plain(raw, (), lines, doc)
    return doc


def _plain(node: Any, path: KeyPath, lines: dict[KeyPath, int], doc: Document,
           verbatim: bool = False) -> Any:
    """Convert ruamel nodes to dicts/lists, recording lines and substituting references
    (except below a `VERBATIM` key)."""
    if isinstance(node, CommentedMap):
        out: dict[str, Any] = {}
        for key, value in node.items():
            sub = (*path, str(key))
            with contextlib.suppress(KeyError, TypeError):
                lines[sub] = node.lc.key(key)[0] + 1
            out[str(key)] = _plain(value, sub, lines, doc, verbatim or _verbatim(sub))
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for index, value in enumerate(node):
            sub = (*path, index)
            with contextlib.suppress(KeyError, TypeError):
                lines[sub] = node.lc.item(index)[0] + 1
            items.append(_plain(value, sub, lines, doc, verbatim))
        return items
    if isinstance(node, str) and not verbatim:
        return _substitute(node, path, doc)
    if isinstance(node, str):
        return str(node)  # a plain str, not ruamel's scalar string types
    return node


def _substitute(value: str, path: KeyPath, doc: Document) -> Any:
    if "${" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group("file"):
            file = Path(match.group("file").strip()).expanduser()
            try:
                return file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise doc.error(path, f"cannot read secret file {str(file)!r}: "
                                      f"{exc.strerror}") from None
        var, default = match.group("var"), match.group("default")
        if var in os.environ:
            return os.environ[var]
        if default is not None:
            return default
        raise doc.error(path, f"environment variable {var} is not set and has no default "
                              f"(write ${{env.{var}:=value}} to give one)")

    # The result stays a string: the schema converts it where it expects a number or a boolean
    # (`port: ${env.PORT}` loads as an int) and keeps it where it expects text (a password of
    # digits stays a string).
    return _SUBST.sub(replace, value)


def flatten_errors(messages: Any, path: KeyPath = ()) -> Iterator[tuple[KeyPath, str]]:
    """marshmallow's nested error dict as (key path, message) pairs."""
    if isinstance(messages, dict):
        for key, value in messages.items():
            sub = path if key == "_schema" else (*path, key)
            yield from flatten_errors(value, sub)
    elif isinstance(messages, list):
        for item in messages:
            yield from flatten_errors(item, path)
    else:
        yield path, str(messages)
