"""`/v1/infer` in the OpenAPI document: upstream's request and response shapes, from the same
marshmallow schemas that validate requests."""

from __future__ import annotations

from typing import Any

from openapi_spec_validator import validate


async def test_infer_is_documented(make_app: Any) -> None:
    document = await (await make_app({}).test_client().get("/openapi.json")).get_json()
    validate(document)
    operation = document["paths"]["/v1/infer"]["post"]
    assert operation["x-lcore-action"] == "rlsapi_v1_infer"
    assert operation["tags"] == ["rlsapi-v1"]
    assert {"200", "401", "403", "404", "413", "422", "429", "500", "503"} <= set(
        operation["responses"])
    schemas = document["components"]["schemas"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/RlsapiV1InferRequest"}
    request = schemas["RlsapiV1InferRequest"]
    assert request["required"] == ["question"]
    assert request["properties"]["question"]["maxLength"] == 32_768
    assert set(request["properties"]) == {"question", "context", "skip_rag", "include_metadata"}
    context = schemas["RlsapiV1Context"]["properties"]
    assert set(context) == {"stdin", "attachments", "terminal", "systeminfo", "cla"}
    assert context["stdin"]["maxLength"] == 65_536
    assert set(schemas["RlsapiV1SystemInfo"]["properties"]) == {"os", "version", "arch", "id"}
    answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/RlsapiV1InferResponse"}
    data = schemas["RlsapiV1InferData"]["properties"]
    assert set(data) == {"text", "request_id", "tool_calls", "tool_results", "rag_chunks",
                         "referenced_documents", "input_tokens", "output_tokens"}
