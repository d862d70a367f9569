"""`redaction` shields: ordered regular-expression substitutions over text."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lcore_core.shields.schema import compile_rule


@dataclass(frozen=True)
class Redaction:
    """One configured `redaction` shield, its rules compiled."""

    name: str
    rules: tuple[tuple[re.Pattern[str], str], ...]

    @classmethod
    def from_config(cls, name: str, config: dict[str, Any]) -> Redaction:
        return cls(name, tuple((compile_rule(rule, config["case_sensitive"]),
                                rule["replacement"]) for rule in config["rules"]))

    def apply(self, text: str) -> tuple[str, int]:
        """`text` with every rule applied in order, and how many substitutions were made."""
        total = 0
        for pattern, replacement in self.rules:
            text, count = pattern.subn(replacement, text)
            total += count
        return text, total


def redact(redactions: Iterable[Redaction], text: str) -> str:
    """`text` after each shield in turn (shields in their configured order)."""
    for redaction in redactions:
        text, _ = redaction.apply(text)
    return text
