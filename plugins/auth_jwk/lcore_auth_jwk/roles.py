"""Role rules: JSONPath over the verified claims, with upstream's operator semantics."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from jsonpath_ng import JSONPath
from jsonpath_ng import parse as parse_jsonpath


@dataclass(frozen=True)
class RoleRule:
    path: JSONPath
    operator: str
    negate: bool
    value: Any
    roles: frozenset[str]
    regex: re.Pattern[str] | None = None

    @classmethod
    def from_settings(cls, rule: dict[str, Any]) -> RoleRule:
        regex = re.compile(rule["value"]) if rule["operator"] == "match" else None
        return cls(parse_jsonpath(rule["jsonpath"]), rule["operator"], rule["negate"],
                   rule["value"], frozenset(rule["roles"]), regex)

    def matches(self, claims: dict[str, Any]) -> bool:
        # Upstream's semantics, exactly: `found` is the list of every value the path selects
        # (a path to one list selects that list: use `[*]` to select its items). `equals`
        # compares that list with the value, `contains` looks for the value among its items
        # (whole items: no substring match), `in` looks for the list in the value, `match`
        # searches each string item with the regex.
        found = [m.value for m in self.path.find(claims)]
        result = False
        try:
            if self.operator == "equals":
                result = found == self.value
            elif self.operator == "contains":
                result = self.value in found
            elif self.operator == "in":
                result = found in self.value
            elif self.operator == "match" and self.regex is not None:
                result = any(isinstance(v, str) and bool(self.regex.search(v)) for v in found)
        except TypeError:
            # `in` with a scalar value: upstream fails the request; LCore grants nothing.
            result = False
        return not result if self.negate else result


def resolve_roles(rules: list[RoleRule], claims: dict[str, Any]) -> frozenset[str]:
    roles: set[str] = set()
    for rule in rules:
        if rule.matches(claims):
            roles |= rule.roles
    return frozenset(roles)
