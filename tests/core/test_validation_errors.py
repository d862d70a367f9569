"""A body that fails validation gets FastAPI's 422 list, as upstream's clients parse it."""

from __future__ import annotations

from typing import Any

import pytest
from marshmallow import Schema, ValidationError
from marshmallow.validate import Range

from lcore_core import validation
from lcore_core.schemas import LaxInteger
from lcore_core.testing.errors import invalid_fields


async def test_missing_unknown_and_mistyped_fields(make_app: Any) -> None:
    client = make_app({}).test_client()
    response = await client.post("/v1/query", json={"nope": 1, "conversation_id": 7})
    assert response.status_code == 422
    detail = (await response.get_json())["detail"]
    by_loc = {tuple(entry["loc"]): entry for entry in detail}
    assert by_loc[("body", "query")] == {
        "type": "missing", "loc": ["body", "query"], "msg": "Field required",
        "input": {"nope": 1, "conversation_id": 7}}
    assert by_loc[("body", "nope")] == {
        "type": "extra_forbidden", "loc": ["body", "nope"],
        "msg": "Extra inputs are not permitted", "input": 1}
    assert by_loc[("body", "conversation_id")]["type"] == "string_type"
    assert by_loc[("body", "conversation_id")]["input"] == 7


async def test_nested_and_whole_body_errors(make_app: Any) -> None:
    client = make_app({}).test_client()
    attachment = {"attachment_type": "log", "content_type": "text/plain"}
    response = await client.post("/v1/query", json={"query": "q", "attachments": [attachment]})
    assert invalid_fields(await response.get_json()) == {"attachments.0.content": "Field required"}
    # a rule about several fields belongs to the whole body, as pydantic's model validators do
    pair = await client.post("/v1/query", json={"query": "q", "model": "m"})
    entry = (await pair.get_json())["detail"][0]
    assert entry["loc"] == ["body"] and entry["type"] == "value_error"
    assert entry["msg"] == "Value error, Provider must be specified if model is specified"
    not_object = await client.post("/v1/query", json=["q"])
    assert (await not_object.get_json())["detail"][0]["type"] == "model_attributes_type"
    broken = await client.post("/v1/query", data='{"query": ', headers={
        "Content-Type": "application/json"})
    assert broken.status_code == 422
    assert (await broken.get_json())["detail"][0]["type"] == "json_invalid"


async def test_openapi_documents_the_list(make_app: Any) -> None:
    client = make_app({}).test_client()
    spec = await (await client.get("/openapi.json")).get_json()
    shapes = spec["paths"]["/v2/query"]["post"]["responses"]["422"]["content"][
        "application/json"]["schema"]["oneOf"]
    assert {"$ref": "#/components/schemas/HTTPValidationError"} in shapes
    assert spec["components"]["schemas"]["ValidationError"]["required"] == ["loc", "msg", "type"]


async def test_length_bounds_in_pydantics_words(make_app: Any) -> None:
    """A length outside its bounds: pydantic's type and text (`1 character`, `items after
    validation, not N`), whether the schema gives one bound or both."""
    client = make_app({}).test_client()
    empty = await client.post("/v1/query", json={"query": ""})  # Length(1, MAX_QUERY_CHARS)
    assert (await empty.get_json())["detail"] == [{
        "type": "string_too_short", "loc": ["body", "query"],
        "msg": "String should have at least 1 character", "input": ""}]
    many = await client.post("/v1/query", json={"query": "q", "shield_ids": ["s"] * 65})
    entry = (await many.get_json())["detail"][0]
    assert (entry["type"], entry["msg"]) == (
        "too_long", "List should have at most 64 items after validation, not 65")


async def test_scalars_and_mapping_entries_in_pydantics_words(make_app: Any) -> None:
    """responses_streaming.feature: `parallel_tool_calls: "maybe"` is pydantic's bool_parsing
    (a string it could not read, not a value of another type), and a mapping entry's error is
    at the entry's key (`metadata.k`, not `metadata.k.value`)."""
    client = make_app({}).test_client()

    async def first(fields: dict[str, Any]) -> dict[str, Any]:
        answer = await client.post("/v1/responses", json={"input": "Hi", **fields})
        assert answer.status_code == 422
        return dict((await answer.get_json())["detail"][0])

    assert await first({"parallel_tool_calls": "maybe"}) == {
        "type": "bool_parsing", "loc": ["body", "parallel_tool_calls"], "input": "maybe",
        "msg": "Input should be a valid boolean, unable to interpret input"}
    assert (await first({"parallel_tool_calls": [True]}))["type"] == "bool_type"
    assert await first({"metadata": {"k": 1}}) == {
        "type": "string_type", "loc": ["body", "metadata", "k"], "input": 1,
        "msg": "Input should be a valid string"}
    parsed = await first({"max_output_tokens": "many"})
    assert (parsed["type"], parsed["msg"]) == (
        "int_parsing", "Input should be a valid integer, unable to parse string as an integer")


LAX_READS = [("1", 1), (" -1 ", -1), ("+1", 1), ("1_0", 10), ("1.0", 1), ("-1.00", -1),
             (True, 1), (False, 0), (2.0, 2), (7, 7)]
LAX_REFUSES = [("x", "int_parsing"), ("", "int_parsing"), ("1e0", "int_parsing"),
               ("1.5", "int_parsing"), ("1__0", "int_parsing"), ("_1", "int_parsing"),
               ("0x1", "int_parsing"), ("\uff11", "int_parsing"), (1.5, "int_from_float"),
               ([1], "int_type"), ({"a": 1}, "int_type")]


@pytest.mark.parametrize(("value", "expected"), LAX_READS)
def test_lax_integer_reads_what_pydantic_reads(value: Any, expected: int) -> None:
    """Upstream's `int` fields (feedback `sentiment`, a prompt's `version`...) are pydantic's
    lax integers; the values were checked against pydantic 2.14."""
    assert Schema.from_dict({"n": LaxInteger()})().load({"n": value}) == {"n": expected}


@pytest.mark.parametrize(("value", "kind"), LAX_REFUSES)
def test_lax_integer_refuses_what_pydantic_refuses(value: Any, kind: str) -> None:
    schema = Schema.from_dict({"n": LaxInteger()})()
    with pytest.raises(ValidationError) as refused:
        schema.load({"n": value})
    [entry] = validation.errors(refused.value.messages, {"n": value})
    assert (entry["type"], entry["input"]) == (kind, value)


@pytest.mark.parametrize(("value", "kind", "text"), [
    (0, "greater_than", "Input should be greater than 0"),
    ("-3", "greater_than", "Input should be greater than 0"),
    (11, "less_than_equal", "Input should be less than or equal to 10"),
])
def test_a_two_sided_range_names_the_bound_crossed(value: Any, kind: str, text: str) -> None:
    """pydantic's `gt=0` (upstream's `version`, `timeout`...) says only the bound crossed."""
    schema = Schema.from_dict({"n": LaxInteger(validate=Range(0, 10, min_inclusive=False))})()
    with pytest.raises(ValidationError) as refused:
        schema.load({"n": value})
    assert validation.errors(refused.value.messages, {"n": value}) == [
        {"type": kind, "loc": ["body", "n"], "msg": text, "input": value}]
