"""Role rules: JSONPath over the verified claims, with upstream's operator semantics."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from jsonpath_ng import JSONPath
from jsonpath_ng import parse as parse_jsonpath

_NOTHING: Any = object()


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
        # Upstream's semantics: `found` is the list of every value the path selects, `equals`
        # compares that list, `contains` looks for the value in it, `in` looks for it in the
        # value. A path that selects one value is also compared as that value itself, so
        # `$.realm_access.roles` contains "admin" and `$.org` equals "acme" work as read.
        found = [m.value for m in self.path.find(claims)]
        single = found[0] if len(found) == 1 else _NOTHING
        result = False
        try:
            if self.operator == "equals":
                result = found == self.value or single == self.value
            elif self.operator == "contains":
                result = self.value in found or (
                    isinstance(single, list | str) and self.value in single)
            elif self.operator == "in":
                result = found in self.value or (single is not _NOTHING
                                                  and single in self.value)
            elif self.operator == "match" and self.regex is not None:
                result = any(isinstance(v, str) and self.regex.search(v) for v in found)
        except TypeError:  # e.g. `in` with a scalar value: no match rather than an error
            result = False
        return not result if self.negate else result


def resolve_roles(rules: list[RoleRule], claims: dict[str, Any]) -> frozenset[str]:
    roles: set[str] = set()
    for rule in rules:
        if rule.matches(claims):
            roles |= rule.roles
    return frozenset(roles)
