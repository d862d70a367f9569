"""The `shields:` section: what loads, and every mistake reported at its file and line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from lcore_core.config import ConfigError, load_config
from lcore_core.plugins import Plugins, load_plugins
from lcore_core.shields.redaction import Redaction
from lcore_core.shields.schema import DEFAULT_INVALID_QUESTION_RESPONSE, DEFAULT_MODEL_PROMPT
from lcore_core.shields.selection import Shields
from lcore_core.shields.validity import QuestionValidity

# Two lines, so the shields section starts on line 3.
BASE = "name: test\nllama_stack: {url: 'http://localhost:8321'}\n"


@pytest.fixture
def plugins() -> Plugins:
    return load_plugins(entrypoints=False)


def load(tmp_path: Path, shields: str, plugins: Plugins) -> dict:
    path = tmp_path / "lightspeed-stack.yaml"
    path.write_text(BASE + textwrap.dedent(shields), encoding="utf-8")
    return load_config(path, plugins)


def errors(tmp_path: Path, shields: str, plugins: Plugins) -> list[str]:
    path = tmp_path / "lightspeed-stack.yaml"
    path.write_text(BASE + textwrap.dedent(shields), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, plugins)
    return str(info.value).replace(str(path), "F").splitlines()


BOTH = """\
shields:
  - name: pii-redaction
    provider_id: redaction
    config:
      rules:
        - pattern: '\\b\\d{3}-\\d{2}-\\d{4}\\b'
          replacement: '[SSN]'
        - pattern: 'secret'
          replacement: '[WORD]'
          case_sensitive: true
      case_sensitive: false
  - name: topic-check
    provider_id: question_validity
    config:
      model_id: openai/gpt-4o-mini
"""


def test_upstream_shapes_load_with_defaults(tmp_path, plugins):
    config = load(tmp_path, BOTH, plugins)
    redaction, topic = config.shields
    assert redaction == {"name": "pii-redaction", "provider_id": "redaction", "config": {
        "rules": [{"pattern": r"\b\d{3}-\d{2}-\d{4}\b", "replacement": "[SSN]",
                   "case_sensitive": None},
                  {"pattern": "secret", "replacement": "[WORD]", "case_sensitive": True}],
        "case_sensitive": False}}
    assert topic == {"name": "topic-check", "provider_id": "question_validity", "config": {
        "model_id": "openai/gpt-4o-mini", "model_prompt": DEFAULT_MODEL_PROMPT,
        "invalid_question_response": DEFAULT_INVALID_QUESTION_RESPONSE}}


def test_absent_section_means_no_shields(tmp_path, plugins):
    assert load(tmp_path, "", plugins).shields == []
    assert not Shields.from_config([])


def test_redaction_rules_apply_in_order_with_case_rules(tmp_path, plugins):
    shields = Shields.from_config(load(tmp_path, BOTH, plugins).shields)
    # The section ignores case; the second rule insists on it.
    assert shields.redact("SSN 123-45-6789, secret SECRET") == "SSN [SSN], [WORD] SECRET"
    redaction = Redaction.from_config("r", {"case_sensitive": False, "rules": [
        {"pattern": "a+", "replacement": "b", "case_sensitive": None},
        {"pattern": "b+", "replacement": "c", "case_sensitive": None}]})
    # A later rule sees what the earlier ones left.
    assert redaction.apply("AAa x") == ("c x", 2)


def test_default_prompt_carries_the_question_and_the_verdict_words():
    shield = QuestionValidity.from_config("t", {
        "model_id": "m", "model_prompt": DEFAULT_MODEL_PROMPT,
        "invalid_question_response": "no"})
    prompt = shield.prompt_for("How much is $5 in ${euro}?")
    assert prompt.rstrip().endswith("Question: How much is $5 in ${euro}?\nAnswer:")
    assert "ALLOWED" in prompt and "REJECTED" in prompt and "${" not in prompt.split(
        "Question: How much")[0]


def test_selected_shields_keep_their_order():
    shields = Shields.from_config([
        {"name": "a", "provider_id": "redaction",
         "config": {"rules": [], "case_sensitive": False}},
        {"name": "b", "provider_id": "question_validity",
         "config": {"model_id": "m", "model_prompt": "${message}",
                    "invalid_question_response": "no"}},
        {"name": "c", "provider_id": "redaction",
         "config": {"rules": [], "case_sensitive": False}}])
    assert shields.names == ("a", "b", "c")
    picked = shields.only(["c", "a"])
    assert picked.names == ("a", "c")
    assert [r.name for r in picked.redactions] == ["a", "c"] and picked.validity == ()
    assert not shields.only([])


def test_invalid_regex_names_the_pattern_and_why(tmp_path, plugins):
    assert errors(tmp_path, """\
        shields:
          - name: pii
            provider_id: redaction
            config:
              rules:
                - pattern: 'ok'
                  replacement: 'x'
                - pattern: '(unclosed'
                  replacement: 'x'
        """, plugins) == [
        "F:10: shields[0].config.rules[1].pattern: invalid regular expression '(unclosed': "
        "missing ), unterminated subpattern at position 0"]


def test_regex_matching_nothing_is_refused(tmp_path, plugins):
    assert errors(tmp_path, """\
        shields:
          - name: pii
            provider_id: redaction
            config:
              rules:
                - pattern: '\\d*'
                  replacement: '#'
        """, plugins) == [
        "F:8: shields[0].config.rules[0].pattern: regular expression '\\\\d*' matches the "
        "empty string; it must match at least one character"]


def test_replacement_naming_a_missing_group(tmp_path, plugins):
    assert errors(tmp_path, """\
        shields:
          - name: pii
            provider_id: redaction
            config:
              rules:
                - pattern: '\\d+'
                  replacement: '\\2'
        """, plugins) == [
        "F:9: shields[0].config.rules[0].replacement: invalid replacement '\\\\2' for pattern "
        "'\\\\d+': invalid group reference 2 at position 1"]


def test_duplicate_names(tmp_path, plugins):
    assert errors(tmp_path, """\
        shields:
          - name: same
            provider_id: redaction
            config: {rules: []}
          - name: other
            provider_id: redaction
            config: {rules: []}
          - name: same
            provider_id: question_validity
            config: {model_id: m}
        """, plugins) == [
        "F:10: shields[2].name: shield name 'same' is used twice; names must be unique"]


def test_unknown_provider_lists_the_valid_ones(tmp_path, plugins):
    assert errors(tmp_path, """\
        shields:
          - name: guard
            provider_id: llama-guard
            config: {}
        """, plugins) == [
        "F:5: shields[0].provider_id: unknown provider_id 'llama-guard'; valid: "
        "question_validity, redaction"]


def test_missing_and_unknown_keys(tmp_path, plugins):
    assert errors(tmp_path, """\
        shields:
          - identifier: topic
            provider_id: question_validity
            config: {model_prompt: 'x ${message}', modelid: m}
        """, plugins) == [
        "F:4: shields[0].identifier: unknown key",
        "F:4: shields[0].name: required key is missing"]
    assert errors(tmp_path, """\
        shields:
          - name: topic
            provider_id: question_validity
            config:
              modelid: m
        """, plugins) == [
        "F:6: shields[0].config.model_id: required key is missing",
        "F:7: shields[0].config.modelid: unknown key"]


def test_config_must_be_a_mapping_and_is_required(tmp_path, plugins):
    assert errors(tmp_path, """\
        shields:
          - name: pii
            provider_id: redaction
            config: [1]
          - name: other
            provider_id: redaction
        """, plugins) == [
        "F:6: shields[0].config: must be a mapping",
        "F:7: shields[1].config: required key is missing"]


def test_prompt_placeholders_are_checked(tmp_path, plugins):
    assert errors(tmp_path, """\
        shields:
          - name: topic
            provider_id: question_validity
            config:
              model_id: m
              model_prompt: 'Is ${question} on topic? Say ${allowed} or ${rejected}.'
        """, plugins) == [
        "F:8: shields[0].config.model_prompt: unknown placeholder ${question}; the prompt may "
        "use ${message} (the question), ${allowed} (ALLOWED) and ${rejected} (REJECTED); write "
        "$$ for a literal dollar sign"]
    assert errors(tmp_path, """\
        shields:
          - name: topic
            provider_id: question_validity
            config: {model_id: m, model_prompt: 'costs 5$ ${message}'}
        """, plugins) == [
        "F:6: shields[0].config.model_prompt: invalid '$' in the prompt: write $$ for a "
        "literal dollar sign, or one of ${message}, ${allowed}, ${rejected}"]


def test_section_must_be_a_list(tmp_path, plugins):
    assert errors(tmp_path, "shields: {name: x}\n", plugins) == ["F:3: shields: Not a valid list."]
