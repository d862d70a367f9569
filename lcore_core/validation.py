"""Validation failures in the shape upstream's clients parse.

Upstream validates bodies and query strings with pydantic under FastAPI, which answers a 422 whose
`detail` is a list of `{"type", "loc", "msg", "input"}`. LCore validates with marshmallow; this
module turns marshmallow's nested messages into that list: `loc` starts with `body` or `query`,
then the field names and list indexes, and the commonest messages get pydantic's type and text.
Checks that upstream makes inside its endpoints keep the `{"response", "cause"}` shape."""

from __future__ import annotations

import re
from typing import Any

from lcore_core.errors import UnprocessableEntity

Loc = tuple[str | int, ...]

# marshmallow's default messages -> (pydantic error type, pydantic message)
_FIXED = {
    "Missing data for required field.": ("missing", "Field required"),
    "Unknown field.": ("extra_forbidden", "Extra inputs are not permitted"),
    "Not a valid string.": ("string_type", "Input should be a valid string"),
    "Not a valid integer.": ("int_type", "Input should be a valid integer"),
    "Not a valid number.": ("float_type", "Input should be a valid number"),
    "Not a valid boolean.": ("bool_type", "Input should be a valid boolean"),
    "Not a valid list.": ("list_type", "Input should be a valid list"),
    "Invalid input type.": ("dict_type", "Input should be a valid dictionary"),
    "Not a valid mapping type.": ("dict_type", "Input should be a valid dictionary"),
    "Not a valid UUID.": ("uuid_parsing", "Input should be a valid UUID"),
    "Not a valid datetime.": ("datetime_parsing", "Input should be a valid datetime"),
    "Not a valid URL.": ("url_parsing", "Input should be a valid URL"),
    "Field may not be null.": ("none_forbidden", "Input should not be None"),
}
_LONGER = re.compile(r"Longer than maximum length (\d+)\.")
_SHORTER = re.compile(r"Shorter than minimum length (\d+)\.")
_BETWEEN = re.compile(r"Length must be between (\d+) and (\d+)\.")
_ONE_OF = re.compile(r"Must be one of: (.*)\.")
# marshmallow's Range: one bound, or both (pydantic names only the bound that was crossed)
_BOUND = re.compile(r"Must be (greater than(?: or equal to)?|less than(?: or equal to)?) "
                    r"([^ ]+?)\.")
_BOUNDS = re.compile(r"Must be (greater than(?: or equal to)?) ([^ ]+) and "
                     r"(less than(?: or equal to)?) ([^ ]+?)\.")
_BOUND_TYPES = {"greater than": "greater_than", "greater than or equal to": "greater_than_equal",
                "less than": "less_than", "less than or equal to": "less_than_equal"}
_MISSING = object()


def _classify(message: str, value: Any) -> tuple[str, str]:
    if message in _FIXED:
        return _scalar(_FIXED[message], value)
    if (match := _BETWEEN.fullmatch(message)) and isinstance(value, (str, list)):
        # pydantic names the bound that was crossed
        message = (f"Shorter than minimum length {match[1]}." if len(value) < int(match[1])
                   else f"Longer than maximum length {match[2]}.")
    for pattern, kind, bound in ((_LONGER, "too_long", "most"), (_SHORTER, "too_short", "least")):
        if match := pattern.fullmatch(message):
            return _length_error(kind, bound, int(match[1]), value)
    if match := _ONE_OF.fullmatch(message):
        *first, last = [f"'{c}'" for c in match[1].split(", ")]
        return "literal_error", f"Input should be {', '.join(first)} or {last}" if first else (
            f"Input should be {last}")
    if match := _BOUNDS.fullmatch(message):
        low, high = (match[1], match[2]), (match[3], match[4])
        op, bound = high if _above(value, match[2]) else low
        return _BOUND_TYPES[op], f"Input should be {op} {bound}"
    if match := _BOUND.fullmatch(message):
        return _BOUND_TYPES[match[1]], f"Input should be {match[1]} {match[2]}"
    return "value_error", f"Value error, {message}"


def _above(value: Any, lower: str) -> bool:
    """Whether a number that failed a two-sided range lies above its lower bound (so it
    crossed the upper one)."""
    try:
        return float(value) > float(lower)
    except (TypeError, ValueError):
        return False


# pydantic's words for a scalar that has the wrong type but could have been parsed (a string,
# or a number for a boolean) rather than one of another type altogether
_PARSING = {
    "bool_type": ("bool_parsing", "Input should be a valid boolean, unable to interpret input"),
    "int_type": ("int_parsing",
                 "Input should be a valid integer, unable to parse string as an integer"),
    "float_type": ("float_parsing",
                   "Input should be a valid number, unable to parse string as a number"),
}


def _scalar(fixed: tuple[str, str], value: Any) -> tuple[str, str]:
    kind = fixed[0]
    if kind in _PARSING and isinstance(value, str):
        return _PARSING[kind]
    if kind == "bool_type" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return _PARSING[kind]
    if kind == "int_type" and isinstance(value, float):
        return "int_from_float", "Input should be a valid integer, got a number with a " \
                                 "fractional part"
    return fixed


def _length_error(kind: str, bound: str, limit: int, value: Any) -> tuple[str, str]:
    """pydantic's type and text for a string or list outside its length bounds."""
    plural = "" if limit == 1 else "s"
    if isinstance(value, str):
        return f"string_{kind}", f"String should have at {bound} {limit} character{plural}"
    actual = f", not {len(value)}" if isinstance(value, list) else ""
    return kind, f"List should have at {bound} {limit} item{plural} after validation{actual}"


# pydantic's names for the branches of a `str | list[...]` field: they address the value itself
_UNION_BRANCHES = ("str", "list")


def _at(data: Any, path: Loc) -> Any:
    for key in path:
        if key in _UNION_BRANCHES and not isinstance(data, dict):
            continue
        present = key in data if isinstance(data, dict) else (
            isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data))
        if present:
            data = data[key]
        else:
            return _MISSING
    return data


def _walk(messages: Any, path: Loc, data: Any, out: list[dict[str, Any]]) -> None:
    if isinstance(messages, dict):
        if messages.keys() <= {"key", "value"} and not isinstance(_at(data, path), dict):
            # a mapping field's entry (marshmallow: {"value": [...]}): pydantic's loc ends at
            # the entry's key
            messages = [m for inner in messages.values() for m in (
                inner if isinstance(inner, list) else [inner])]
        else:
            for key, inner in messages.items():
                # marshmallow files errors of the whole object (validates_schema) under
                # `_schema`
                _walk(inner, path if key == "_schema" else (*path, key), data, out)
            return
    for message in messages if isinstance(messages, list) else [messages]:
        if isinstance(message, (dict, list)):
            _walk(message, path, data, out)
            continue
        value = _at(data, path)
        kind, text = _classify(str(message), value)
        if kind == "missing":
            value = _at(data, path[:-1])  # pydantic shows the object the field is missing from
        entry: dict[str, Any] = {"type": kind, "loc": list(path), "msg": text}
        if value is not _MISSING:
            entry["input"] = value
        out.append(entry)


def errors(messages: Any, data: Any, where: str = "body") -> list[dict[str, Any]]:
    """FastAPI's validation list for marshmallow's `messages` about `data`."""
    out: list[dict[str, Any]] = []
    _walk(messages, (), data, out)
    for entry in out:
        entry["loc"] = [where, *entry["loc"]]
    return out


class InvalidRequest(UnprocessableEntity):
    """A body or query string that fails validation: 422 with FastAPI's list."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        summary = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}"
            for e in entries)
        super().__init__("Invalid request", summary)
        self.entries = entries

    def body(self) -> dict[str, Any]:
        return {"detail": self.entries}


def invalid(messages: Any, data: Any, where: str = "body") -> InvalidRequest:
    """The error to raise for a marshmallow ValidationError on `data`."""
    return InvalidRequest(errors(messages, data, where))


def not_an_object(data: Any) -> InvalidRequest:
    return InvalidRequest([{
        "type": "model_attributes_type", "loc": ["body"], "input": data,
        "msg": "Input should be a valid dictionary or object to extract fields from"}])


def malformed_json(position: int, reason: str) -> InvalidRequest:
    return InvalidRequest([{
        "type": "json_invalid", "loc": ["body", position], "msg": "JSON decode error",
        "input": {}, "ctx": {"error": reason}}])
