"""The `shields:` section (upstream's format): a list of named shields, each a `provider_id`
and that provider's `config`.

    shields:
      - name: pii-redaction
        provider_id: redaction
        config: {rules: [{pattern, replacement, case_sensitive}], case_sensitive: false}
      - name: topic-check
        provider_id: question_validity
        config: {model_id, model_prompt, invalid_question_response}

Everything a query would trip over later is checked here, so a bad file fails at start-up with
its line: a regular expression that does not compile (or matches the empty string), a
replacement naming a group the pattern lacks, a prompt placeholder other than the three known
ones, a repeated name, an unknown `provider_id`.
"""

from __future__ import annotations

import re
from string import Template
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate

REDACTION = "redaction"
QUESTION_VALIDITY = "question_validity"
PROVIDERS = (QUESTION_VALIDITY, REDACTION)

# The verdict words the validity model answers with (upstream's, so upstream prompts work).
ALLOWED = "ALLOWED"
REJECTED = "REJECTED"
PLACEHOLDERS = ("message", "allowed", "rejected")

# Upstream's defaults target OpenShift Lightspeed. The reply is upstream's text, whitespace and
# all (clients may compare it); the prompt is LCore's own wording of the same instruction.
DEFAULT_INVALID_QUESTION_RESPONSE = (
    "\nHi, I'm the OpenShift Lightspeed assistant, I can help you with questions about "
    "OpenShift, \nplease ask me a question related to OpenShift.\n")
DEFAULT_MODEL_PROMPT = """\
You decide whether a question belongs to the topic of Kubernetes and OpenShift.
Reply with exactly one word and nothing else:
- ${allowed} if the question is about Kubernetes, OpenShift or the technologies around them
  (clusters, containers, pods, deployments, operators, networking, storage, security);
- ${rejected} for any other question, and for an empty question.

Question: How do I make my deployment scale with CPU load?
Answer: ${allowed}

Question: What is the capital of France?
Answer: ${rejected}

Question: Write me a poem about autumn.
Answer: ${rejected}

Question: ${message}
Answer:"""


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class RedactionRuleSchema(_Strict):
    pattern = fields.String(required=True, validate=validate.Length(min=1))
    replacement = fields.String(required=True)
    # null: the section's case_sensitive applies.
    case_sensitive = fields.Boolean(load_default=None, allow_none=True)


class RedactionSchema(_Strict):
    # Applied in order: a later rule sees what the earlier ones left.
    rules = fields.List(fields.Nested(RedactionRuleSchema), load_default=list)
    case_sensitive = fields.Boolean(load_default=False)

    @post_load
    def _compiles(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        problems: dict[int, dict[str, list[str]]] = {}
        for i, rule in enumerate(data["rules"]):
            key, message = _rule_problem(rule, data["case_sensitive"])
            if message:
                problems[i] = {key: [message]}
        if problems:
            raise ValidationError({"rules": problems})
        return data


def compile_rule(rule: dict[str, Any], case_sensitive: bool) -> re.Pattern[str]:
    """A rule's pattern, ignoring case unless the rule (else its section) says otherwise."""
    sensitive = rule.get("case_sensitive")
    sensitive = case_sensitive if sensitive is None else sensitive
    return re.compile(rule["pattern"], 0 if sensitive else re.IGNORECASE)


def _rule_problem(rule: dict[str, Any], case_sensitive: bool) -> tuple[str, str]:
    """(key, message) of what is wrong with a rule, or ("", "") when nothing is."""
    pattern = rule["pattern"]
    try:
        compiled = compile_rule(rule, case_sensitive)
    except re.error as exc:
        return "pattern", f"invalid regular expression {pattern!r}: {exc}"
    if compiled.search("") is not None:
        # `\d*` and friends match between every two characters: the replacement would be
        # inserted all over the text.
        return "pattern", (f"regular expression {pattern!r} matches the empty string; "
                           f"it must match at least one character")
    try:
        # Substituting into nothing still parses the replacement's group references.
        compiled.subn(rule["replacement"], "")
    except (re.error, IndexError) as exc:
        return "replacement", (f"invalid replacement {rule['replacement']!r} for pattern "
                               f"{pattern!r}: {exc}")
    return "", ""


def _prompt_template(value: str) -> None:
    template = Template(value)
    if not template.is_valid():
        raise ValidationError("invalid '$' in the prompt: write $$ for a literal dollar sign, "
                              "or one of ${message}, ${allowed}, ${rejected}")
    unknown = sorted(set(template.get_identifiers()) - set(PLACEHOLDERS))
    if unknown:
        raise ValidationError(
            f"unknown placeholder {', '.join('${' + u + '}' for u in unknown)}; the prompt may "
            f"use ${{message}} (the question), ${{allowed}} ({ALLOWED}) and ${{rejected}} "
            f"({REJECTED}); write $$ for a literal dollar sign")


class QuestionValiditySchema(_Strict):
    # A Llama Stack model id (`provider/model`), as in /v1/models.
    model_id = fields.String(required=True, validate=validate.Length(min=1))
    model_prompt = fields.String(load_default=DEFAULT_MODEL_PROMPT,
                                 validate=[validate.Length(min=1), _prompt_template])
    invalid_question_response = fields.String(load_default=DEFAULT_INVALID_QUESTION_RESPONSE)


CONFIG_SCHEMAS: dict[str, type[Schema]] = {
    QUESTION_VALIDITY: QuestionValiditySchema,
    REDACTION: RedactionSchema,
}


class ShieldSchema(_Strict):
    name = fields.String(required=True, validate=validate.Length(min=1))
    provider_id = fields.String(required=True, validate=validate.OneOf(
        PROVIDERS, error="unknown provider_id {input!r}; valid: " + ", ".join(PROVIDERS)))
    config = fields.Raw(required=True)

    @post_load
    def _config(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        raw = data["config"]
        if not isinstance(raw, dict):
            raise ValidationError({"config": ["must be a mapping"]})
        try:
            data["config"] = CONFIG_SCHEMAS[data["provider_id"]]().load(raw)
        except ValidationError as exc:
            raise ValidationError({"config": exc.messages}) from None
        return data


def _unique_names(shields: list[dict[str, Any]]) -> None:
    seen: set[str] = set()
    problems: dict[int, dict[str, list[str]]] = {}
    for i, shield in enumerate(shields):
        name = shield["name"]
        if name in seen:
            problems[i] = {"name": [f"shield name {name!r} is used twice; names must be "
                                    f"unique"]}
        seen.add(name)
    if problems:
        raise ValidationError(problems)  # type: ignore[arg-type]


def shields_field() -> fields.List:
    """The `shields` section's field (an absent section: no shields)."""
    return fields.List(fields.Nested(ShieldSchema), load_default=list, validate=_unique_names)
