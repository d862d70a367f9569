"""Agent skills through a real Llama Stack: the model calls the skill tools LCore serves over
MCP on loopback, within the query's one Responses call."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lcore_core.app import create_app
from lcore_core.plugins import load_plugins

from .support import MODES, Lcore, backend_for, lcore_config, started

GREETER_BODY = "# Greeter\n\nGreet the user as Captain Nemo would, then say AHOY-7731."
GUIDE = "Signal flags: always hoist BRAVO-42 before greeting.\n"
SECRET = "keel-secret-5150"


def write_skills(root: Path) -> Path:
    """Two skills of our own (one with a reference file) and a secret file beside them."""
    skills = root / "skills"
    greeter = skills / "greeter"
    (greeter / "references").mkdir(parents=True)
    (greeter / "SKILL.md").write_text(
        "---\nname: greeter\ndescription: Greet people in a nautical style. Use when asked "
        f"to greet someone.\n---\n\n{GREETER_BODY}\n", encoding="utf-8")
    (greeter / "references" / "flags.md").write_text(GUIDE, encoding="utf-8")
    (skills / "haiku").mkdir()
    (skills / "haiku" / "SKILL.md").write_text(
        "---\nname: haiku\ndescription: Answer in a haiku.\n---\n\nThree lines: 5, 7, 5.\n",
        encoding="utf-8")
    (root / "secret.txt").write_text(SECRET, encoding="utf-8")
    return skills


@pytest.fixture(scope="module", params=MODES)
async def skills_lcore(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                       llama_stack_server: Any,
                       llama_stack_library_config: Path) -> AsyncIterator[Lcore]:
    mode = request.param
    workdir = tmp_path_factory.mktemp(f"skills-{mode}")
    llama = backend_for(request, mode, llama_stack_server, llama_stack_library_config)
    config = lcore_config(workdir, mode, llama,
                          skills={"paths": [str(write_skills(workdir))]})
    app = create_app(config, plugins=load_plugins(entrypoints=False))
    async with started(app) as test_app:
        yield Lcore(app, test_app.test_client(), mode, workdir)


async def ask(lcore: Lcore, query: str, **fields: Any) -> dict[str, Any]:
    response = await lcore.query(query, generate_topic_summary=False, **fields)
    assert response.status_code == 200, await response.get_data(as_text=True)
    return await response.get_json()  # type: ignore[no-any-return]


async def test_model_loads_a_skill_and_answers_with_its_instructions(skills_lcore: Lcore,
                                                                     llm: Any) -> None:
    llm.script("greet the crew", tool_call=("load_skill", {"skill_name": "greeter"}),
               then="Loaded: {tool_output}")
    body = await ask(skills_lcore, "please greet the crew")
    assert "AHOY-7731" in body["response"]  # the skill's instructions reached the model
    assert [(c["name"], c["args"]) for c in body["tool_calls"]] == [
        ("load_skill", {"skill_name": "greeter"})]
    (result,) = body["tool_results"]
    assert result["status"] == "success"
    # skills.feature: upstream's types for the skill tools (function tools in its agent)
    assert body["tool_calls"][0]["type"] == "function_call"
    assert result["type"] == "function_call_output"
    assert result["content"].startswith("<skill>\n<name>greeter</name>\n")
    assert '<resource name="references/flags.md" />' in result["content"]
    assert GREETER_BODY in result["content"]
    # What the model was given: the catalog in the instructions and the three skill tools.
    (first, *_) = [r for r in llm.chat_requests if "greet the crew" in r.text]
    system = next(m for m in first.messages if m.get("role") == "system")
    assert "<name>greeter</name>" in json.dumps(system) and "<name>haiku</name>" in \
        json.dumps(system)
    assert {"list_skills", "load_skill", "read_skill_resource"} <= set(first.tool_names)
    assert "run_skill_script" not in first.tool_names


async def test_model_reads_a_reference_file(skills_lcore: Lcore, llm: Any) -> None:
    llm.script("which flag", tool_call=("read_skill_resource", {
        "skill_name": "greeter", "resource_name": "references/flags.md"}),
        then="Per the guide: {tool_output}")
    body = await ask(skills_lcore, "which flag first?")
    assert "BRAVO-42" in body["response"]
    assert body["tool_results"][0]["status"] == "success"
    assert body["tool_results"][0]["content"] == GUIDE


async def test_path_traversal_is_refused(skills_lcore: Lcore, llm: Any) -> None:
    llm.script("sneak out", tool_call=("read_skill_resource", {
        "skill_name": "greeter", "resource_name": "../../secret.txt"}),
        then="Got: {tool_output}")
    body = await ask(skills_lcore, "sneak out please")
    assert SECRET not in json.dumps(body)
    assert [c["name"] for c in body["tool_calls"]] == ["read_skill_resource"]
    assert body["tool_results"][0]["status"] == "failure"


async def test_streaming_lists_skills(skills_lcore: Lcore, llm: Any) -> None:
    llm.script("what skills", tool_call=("list_skills", {}), then="Skills: {tool_output}")
    status, events = await skills_lcore.stream("what skills exist?",
                                               generate_topic_summary=False)
    assert status == 200
    calls = [e["data"] for e in events if e["event"] == "tool_call"]
    results = [e["data"] for e in events if e["event"] == "tool_result"]
    assert [c["name"] for c in calls] == ["list_skills"]
    assert json.loads(results[0]["content"]) == {
        "greeter": "Greet people in a nautical style. Use when asked to greet someone.",
        "haiku": "Answer in a haiku."}
    tokens = "".join(e["data"]["token"] for e in events if e["event"] == "token")
    assert "haiku" in tokens


async def test_no_tools_offers_no_skills(skills_lcore: Lcore, llm: Any) -> None:
    await ask(skills_lcore, "plain question without tools", no_tools=True)
    (asked,) = [r for r in llm.chat_requests if "plain question without tools" in r.text]
    assert "load_skill" not in asked.tool_names
    assert "<available_skills>" not in asked.text


async def test_tools_and_skills_endpoints_list_them(skills_lcore: Lcore) -> None:
    tools = (await (await skills_lcore.client.get("/v1/tools")).get_json())["tools"]
    skill_tools = [t for t in tools if t["provider_id"] == "agent-skills"]
    assert [t["identifier"] for t in skill_tools] == [
        "list_skills", "load_skill", "read_skill_resource"]
    assert all(t["toolgroup_id"] == "builtin::agent-skills" and t["server_source"] == "builtin"
               for t in skill_tools)
    listed = await (await skills_lcore.client.get("/v1/skills")).get_json()
    assert [s["name"] for s in listed["skills"]] == ["greeter", "haiku"]


async def test_server_listening_where_configured(tmp_path: Path, llama_stack_server: Any,
                                                 llm: Any) -> None:
    """mcp_host/mcp_port/mcp_url: what a Llama Stack on another host needs (here: all
    interfaces, and the URL Llama Stack is told)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    skills = {"paths": [str(write_skills(tmp_path))], "mcp_host": "0.0.0.0",
              "mcp_port": port, "mcp_url": f"http://127.0.0.1:{port}/mcp"}
    app = create_app(lcore_config(tmp_path, "server", llama_stack_server.url, skills=skills),
                     plugins=load_plugins(entrypoints=False))
    llm.script("greet the deck", tool_call=("load_skill", {"skill_name": "greeter"}),
               then="Loaded: {tool_output}")
    async with started(app) as test_app:
        lcore = Lcore(app, test_app.test_client(), "server", tmp_path)
        body = await ask(lcore, "greet the deck")
    assert "AHOY-7731" in body["response"]
