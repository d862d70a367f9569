"""Which shields a request runs, from the configured ones and its `shield_ids`.

As upstream: no `shield_ids` runs every configured shield, `[]` none, a list those named (each
name must exist, else 404 "Shield not found"); with `customization.disable_shield_ids_override`
a request that names shields at all is refused with 422. LCore also passes Llama Stack's own
shields on as `guardrails`: a name that is not a configured shield is looked up there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lcore_core.errors import NotFound, UnprocessableEntity
from lcore_core.shields.redaction import Redaction, redact
from lcore_core.shields.schema import QUESTION_VALIDITY, REDACTION
from lcore_core.shields.validity import QuestionValidity

if TYPE_CHECKING:
    from lcore_core.runtime import Runtime

_STATE_KEY = "lcore.shields"


@dataclass(frozen=True)
class Shields:
    """A set of configured shields, in their configured order."""

    redactions: tuple[Redaction, ...] = ()
    validity: tuple[QuestionValidity, ...] = ()
    names: tuple[str, ...] = field(default=())

    @classmethod
    def from_config(cls, entries: Iterable[dict[str, Any]]) -> Shields:
        redactions, validity, names = [], [], []
        for entry in entries:
            names.append(entry["name"])
            if entry["provider_id"] == REDACTION:
                redactions.append(Redaction.from_config(entry["name"], entry["config"]))
            elif entry["provider_id"] == QUESTION_VALIDITY:
                validity.append(QuestionValidity.from_config(entry["name"], entry["config"]))
        return cls(tuple(redactions), tuple(validity), tuple(names))

    def only(self, names: Iterable[str]) -> Shields:
        keep = set(names)
        return Shields(tuple(r for r in self.redactions if r.name in keep),
                       tuple(v for v in self.validity if v.name in keep),
                       tuple(n for n in self.names if n in keep))

    def redact(self, text: str) -> str:
        return redact(self.redactions, text) if self.redactions else text

    def __bool__(self) -> bool:
        return bool(self.names)


NONE = Shields()


def configured(runtime: Runtime) -> Shields:
    """The `shields:` section, compiled once per app."""
    shields = runtime.state.get(_STATE_KEY)
    if shields is None:
        shields = Shields.from_config(runtime.config.get("shields") or [])
        runtime.state[_STATE_KEY] = shields
    return shields  # type: ignore[no-any-return]


def select(runtime: Runtime, requested: list[str] | None) -> tuple[Shields, list[str] | None]:
    """The configured shields this request runs, and the other names it asked for (None: it
    named none, so every Llama Stack shield applies)."""
    custom = runtime.config.get("customization") or {}
    if requested is not None and custom.get("disable_shield_ids_override"):
        raise UnprocessableEntity(
            "Shield IDs customization is disabled",
            "This instance does not support customizing shield IDs in the query request "
            "(disable_shield_ids_override is set). Please remove the shield_ids field from "
            "your request.")
    shields = configured(runtime)
    if requested is None:
        return shields, None
    return shields.only(requested), [n for n in requested if n not in shields.names]


def not_found(names: list[str]) -> NotFound:
    """Upstream's 404 for `shield_ids` naming shields that exist nowhere."""
    resource = "Shields" if len(names) > 1 else "Shield"
    return NotFound(f"{resource} not found",
                    f"{resource} with ID {', '.join(sorted(names))} does not exist")
