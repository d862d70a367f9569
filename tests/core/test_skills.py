"""Agent skills: the `skills:` section, SKILL.md checks, resources, the MCP server, /v1/skills."""

from __future__ import annotations

import os
import socket
import textwrap
from pathlib import Path

import httpx
import pytest
from quart.testing.app import LifespanError

from lcore_core.config import ConfigError, load_config
from lcore_core.plugins import Plugins, load_plugins
from lcore_core.skills import catalog as cat
from lcore_core.skills.server import SkillsServer
from lcore_core.skills.tools import ToolFailure, call, catalog_entries, instructions

BASE = "name: test\nllama_stack: {url: 'http://localhost:8321'}\n"


@pytest.fixture
def plugins() -> Plugins:
    return load_plugins(entrypoints=False)


def skill(root: Path, name: str, description: str = "Does a thing. Use when asked.",
          body: str = "# Steps\n\n1. Do it.", *, front: str | None = None,
          files: dict[str, str] | None = None) -> Path:
    """A skill directory `root/name` with SKILL.md (and extra files)."""
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    if front is None:
        front = f"name: {name}\ndescription: {description}\n"
    (directory / "SKILL.md").write_text(f"---\n{front}---\n\n{body}\n", encoding="utf-8")
    for rel, text in (files or {}).items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_text(text, encoding="utf-8")
    return directory


def config_errors(tmp_path: Path, plugins: Plugins, *paths: Path | str) -> list[str]:
    listed = "".join(f"    - {p}\n" for p in paths)
    path = tmp_path / "lightspeed-stack.yaml"
    path.write_text(BASE + "skills:\n  paths:\n" + listed, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, plugins)
    return str(info.value).replace(str(path), "F").splitlines()


# --- configuration -------------------------------------------------------------------------


def test_skills_section_loads_both_path_forms(tmp_path, plugins):
    skill(tmp_path / "all", "echo")
    skill(tmp_path / "all", "summarize")
    single = skill(tmp_path / "more", "code-review")
    path = tmp_path / "lightspeed-stack.yaml"
    path.write_text(BASE + textwrap.dedent(f"""\
        skills:
          paths: ["{tmp_path / 'all'}", "{single}"]
        authorization:
          access_rules: [{{role: "*", actions: [get_skills]}}]
        """), encoding="utf-8")
    config = load_config(path, plugins)
    assert config.skills.paths == [str(tmp_path / "all"), str(single)]
    loaded = cat.load_catalog(config.skills.paths)
    assert loaded.names == ["code-review", "echo", "summarize"]


def test_empty_or_absent_skills_section_loads(tmp_path, plugins):
    path = tmp_path / "lightspeed-stack.yaml"
    path.write_text(BASE + "skills: {paths: []}\n", encoding="utf-8")
    assert load_config(path, plugins).skills.paths == []
    path.write_text(BASE, encoding="utf-8")
    assert load_config(path, plugins).skills is None


def test_missing_path_names_the_config_line(tmp_path, plugins):
    assert config_errors(tmp_path, plugins, tmp_path / "nope") == [
        f"F:5: skills.paths[0]: skill path '{tmp_path / 'nope'}' does not exist"]


def test_file_path_and_directory_without_skills_are_refused(tmp_path, plugins):
    (tmp_path / "file.md").write_text("x")
    (tmp_path / "empty" / "a" / "b").mkdir(parents=True)
    lines = config_errors(tmp_path, plugins, tmp_path / "file.md", tmp_path / "empty")
    assert lines == [
        f"F:5: skills.paths[0]: skill path '{tmp_path / 'file.md'}' is not a directory"]
    lines = config_errors(tmp_path, plugins, tmp_path / "empty")
    assert lines == [f"F:5: skills.paths[0]: no SKILL.md in '{tmp_path / 'empty'}' nor in "
                     f"its subdirectories (down to 3 levels)"]


@pytest.mark.parametrize(("front", "expected"), [
    ("name: Echo\ndescription: d\n",
     "SKILL.md:2: name: 'Echo' must be lowercase letters and digits, in groups joined by "
     "single hyphens (no hyphen first or last)"),
    ("name: echo--x\ndescription: d\n", "SKILL.md:2: name: 'echo--x' must be lowercase"),
    ("name: -echo\ndescription: d\n", "SKILL.md:2: name: '-echo' must be lowercase"),
    ("description: d\nname: other\n",
     "SKILL.md:3: name: 'other' must match the skill's directory name 'echo'"),
    ("description: d\n", "SKILL.md:1: name: required key is missing"),
    ("name: echo\n", "SKILL.md:1: description: required key is missing"),
    ("name: echo\ndescription: [a, b]\n", "SKILL.md:3: description: must be a string"),
    ("name: echo\ndescription: " + "x" * 1025 + "\n",
     "SKILL.md:3: description: must be at most 1024 characters (is 1025)"),
    ("name: " + "a" * 65 + "\ndescription: d\n",
     "SKILL.md:2: name: must be at most 64 characters (is 65)"),
    ("name: echo\ndescription: d\n  bad: [\n",
     "SKILL.md:4: invalid YAML in the front matter"),
    ("- a list\n", "SKILL.md:2: the front matter must be a mapping"),
])
def test_front_matter_errors_name_the_skill_file_and_line(tmp_path, plugins, front, expected):
    skill(tmp_path / "skills", "echo", front=front)
    (line,) = config_errors(tmp_path, plugins, tmp_path / "skills")
    assert line.startswith(f"F:5: skills.paths[0]: {tmp_path / 'skills' / 'echo'}/")
    assert expected in line


def test_skill_file_without_front_matter_or_too_large(tmp_path, plugins):
    directory = tmp_path / "echo"
    directory.mkdir()
    (directory / "SKILL.md").write_text("# just markdown\n")
    (line,) = config_errors(tmp_path, plugins, directory)
    assert line.endswith("SKILL.md:1: must begin with YAML front matter (name, description) "
                         "between two '---' lines")
    skill(tmp_path, "echo", body="x" * (cat.MAX_SKILL_FILE_BYTES + 1))
    (line,) = config_errors(tmp_path, plugins, directory)
    assert f"SKILL.md: larger than {cat.MAX_SKILL_FILE_BYTES} bytes" in line


def test_duplicate_names_are_refused(tmp_path, plugins):
    first = skill(tmp_path / "a", "echo")
    second = skill(tmp_path / "b", "echo")
    (line,) = config_errors(tmp_path, plugins, first, tmp_path / "b")
    assert line == (f"F:6: skills.paths[1]: {second}/SKILL.md: skill name 'echo' is also used "
                    f"by {first}/SKILL.md; names must be unique")


def test_number_of_skills_is_bounded(tmp_path, monkeypatch):
    for i in range(4):
        skill(tmp_path, f"s{i}")
    monkeypatch.setattr(cat, "MAX_SKILLS", 3)
    with pytest.raises(cat.PathError, match="more than 3 skills"):
        cat.load_catalog([str(tmp_path)])


def test_skills_deeper_than_three_levels_are_not_searched(tmp_path):
    skill(tmp_path / "ok" / "a" / "b", "deep")  # SKILL.md 3 levels below the path
    assert cat.load_catalog([str(tmp_path / "ok")]).names == ["deep"]
    skill(tmp_path / "far" / "a" / "b" / "c", "too-deep")  # 4 levels below
    with pytest.raises(cat.PathError, match=r"no SKILL\.md"):
        cat.load_catalog([str(tmp_path / "far")])


def test_get_skills_action_is_known(tmp_path, plugins):
    path = tmp_path / "lightspeed-stack.yaml"
    path.write_text(BASE + "authorization:\n  access_rules: [{role: x, actions: [get_skills]}]\n")
    assert load_config(path, plugins).authorization.access_rules[0]["actions"] == ["get_skills"]


# --- resources and the tools ---------------------------------------------------------------


def test_resources_are_text_files_inside_the_skill(tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("top secret")
    directory = skill(tmp_path / "skills", "echo", files={
        "references/guide.md": "Guide text", "templates/form.txt": "Form",
        "__pycache__/x.pyc": "junk"})
    (directory / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    (directory / "link.txt").symlink_to(outside)
    (directory / "loop").symlink_to(directory)
    skill(directory, "nested")  # a skill inside a skill is not a resource of it
    loaded = cat.load_catalog([str(directory)])
    assert loaded.names == ["echo"]
    assert loaded.skills[0].resources == ("references/guide.md", "templates/form.txt")


def test_tools_answer_in_upstreams_formats(tmp_path):
    skill(tmp_path, "echo", "Echo text back.", "# Echo\n\nRepeat it.",
          files={"references/guide.md": "No quotes.\n"})
    skill(tmp_path, "summarize", "Shorten text.")
    loaded = cat.load_catalog([str(tmp_path)])
    assert call(loaded, "list_skills", {}) == \
        '{"echo":"Echo text back.","summarize":"Shorten text."}'
    assert call(loaded, "load_skill", {"skill_name": "echo"}) == (
        f"<skill>\n<name>echo</name>\n<description>Echo text back.</description>\n"
        f"<uri>{tmp_path / 'echo'}</uri>\n\n<resources>\n"
        f'<resource name="references/guide.md" />\n</resources>\n\n<scripts>\n'
        f"<!-- No scripts -->\n</scripts>\n\n<instructions>\n# Echo\n\nRepeat it.\n"
        f"</instructions>\n</skill>\n")
    assert "<!-- No resources -->" in call(loaded, "load_skill", {"skill_name": "summarize"})
    assert call(loaded, "read_skill_resource",
                {"skill_name": "echo", "resource_name": "references/guide.md"}) == "No quotes.\n"
    with pytest.raises(ToolFailure, match=r"Skill .nope. not found\. Available skills: echo, "):
        call(loaded, "load_skill", {"skill_name": "nope"})


@pytest.mark.parametrize("name", [
    "../summarize/SKILL.md", "../../secret.txt", "/etc/passwd", "SKILL.md",
    "references/../../secret.txt", "references/missing.md"])
def test_resource_names_never_reach_other_files(tmp_path, name):
    (tmp_path / "secret.txt").write_text("top secret")
    skill(tmp_path / "skills", "echo", files={"references/guide.md": "Guide"})
    skill(tmp_path / "skills", "summarize")
    loaded = cat.load_catalog([str(tmp_path / "skills")])
    with pytest.raises(ToolFailure, match="not found in skill 'echo'"):
        call(loaded, "read_skill_resource", {"skill_name": "echo", "resource_name": name})


def test_a_link_changed_after_start_up_and_large_files_are_refused(tmp_path, monkeypatch):
    (tmp_path / "secret.txt").write_text("top secret")
    directory = skill(tmp_path / "skills", "echo",
                      files={"references/guide.md": "Guide", "big.txt": "x" * 100})
    loaded = cat.load_catalog([str(directory)])
    guide = directory / "references" / "guide.md"
    guide.unlink()
    guide.symlink_to(tmp_path / "secret.txt")
    with pytest.raises(ToolFailure, match="leads outside the skill's directory"):
        call(loaded, "read_skill_resource",
             {"skill_name": "echo", "resource_name": "references/guide.md"})
    monkeypatch.setattr(cat, "MAX_RESOURCE_BYTES", 99)
    with pytest.raises(ToolFailure, match="larger than 99 bytes"):
        call(loaded, "read_skill_resource", {"skill_name": "echo", "resource_name": "big.txt"})


def test_instructions_and_tool_catalog_entries(tmp_path):
    skill(tmp_path, "echo", "Echo text back.")
    text = instructions(cat.load_catalog([str(tmp_path)]))
    assert "<name>echo</name>\n<description>Echo text back.</description>" in text
    assert "load_skill" in text and "read_skill_resource" in text
    entries = {e["identifier"]: e for e in catalog_entries()}
    assert list(entries) == ["list_skills", "load_skill", "read_skill_resource"]
    assert entries["load_skill"]["parameters"] == [
        {"name": "skill_name", "description": entries["load_skill"]["parameters"][0][
            "description"], "parameter_type": "string", "required": True, "default": None}]
    assert {(e["provider_id"], e["toolgroup_id"], e["server_source"], e["type"])
            for e in entries.values()} == {("agent-skills", "builtin::agent-skills",
                                            "builtin", "tool")}


# --- the MCP server ------------------------------------------------------------------------


async def test_mcp_server_serves_the_tools_to_a_real_client_with_the_token(tmp_path):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    skill(tmp_path, "echo", files={"references/guide.md": "Guide text"})
    server = SkillsServer(cat.load_catalog([str(tmp_path)]))
    await server.start()
    try:
        tool = server.tool()
        assert tool["server_url"].startswith("http://127.0.0.1:")
        assert tool["authorization"] == server.token and len(server.token) >= 32
        headers = {"Authorization": f"Bearer {server.token}"}
        async with (httpx.AsyncClient(headers=headers) as http,
                    streamable_http_client(server.url, http_client=http) as streams,
                    ClientSession(streams[0], streams[1]) as session):
            await session.initialize()
            listed = await session.list_tools()
            assert [t.name for t in listed.tools] == ["list_skills", "load_skill",
                                                      "read_skill_resource"]
            loaded = await session.call_tool("load_skill", {"skill_name": "echo"})
            assert not loaded.isError and "<name>echo</name>" in loaded.content[0].text
            read = await session.call_tool("read_skill_resource", {
                "skill_name": "echo", "resource_name": "references/guide.md"})
            assert read.content[0].text == "Guide text"
            refused = await session.call_tool("read_skill_resource", {
                "skill_name": "echo", "resource_name": "../../etc/passwd"})
            assert refused.isError and "not found" in refused.content[0].text
            too_long = await session.call_tool("load_skill", {"skill_name": "x" * 65})
            assert too_long.isError
        async with httpx.AsyncClient() as http:
            for given in ({}, {"Authorization": "Bearer wrong"}):
                response = await http.post(server.url, json={}, headers=given)
                assert response.status_code == 401
    finally:
        await server.stop()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as http:
            await http.get(server.url)


# --- the endpoints -------------------------------------------------------------------------


async def test_skills_endpoint_lists_loaded_skills(tmp_path, make_app, serving):
    skill(tmp_path / "skills", "summarize", "Shorten text.")
    skill(tmp_path / "skills", "echo", "Echo text back.")
    app = make_app({"skills": {"paths": [str(tmp_path / "skills")]}})
    async with serving(app) as client:
        for path in ("/v1/skills", "/skills"):
            response = await client.get(path)
            assert response.status_code == 200
            assert await response.get_json() == {"skills": [
                {"name": "echo", "description": "Echo text back."},
                {"name": "summarize", "description": "Shorten text."}]}
    assert "skills_server" not in app.runtime.state  # stopped at shutdown


async def test_skills_endpoint_without_skills_and_without_the_action(tmp_path, make_app,
                                                                     serving):
    async with serving(make_app()) as client:
        assert await (await client.get("/v1/skills")).get_json() == {"skills": []}
    rules = {"authorization": {"always_apply_access_rules": True,
                               "access_rules": [{"role": "*", "actions": ["get_tools"]}]}}
    async with serving(make_app(rules)) as client:
        response = await client.get("/v1/skills")
        assert response.status_code == 403
        assert set((await response.get_json())["detail"]) == {"response", "cause"}


def test_no_scripts_are_ever_run(tmp_path):
    # A skill with scripts loads; its scripts are plain resources, and there is no tool to run
    # them (upstream's run_skill_script is not offered).
    directory = skill(tmp_path, "ops", files={"scripts/run.sh": "touch /tmp/pwned\n"})
    os.chmod(directory / "scripts" / "run.sh", 0o755)
    loaded = cat.load_catalog([str(directory)])
    assert loaded.skills[0].resources == ("scripts/run.sh",)
    with pytest.raises(ToolFailure, match="Unknown tool"):
        call(loaded, "run_skill_script", {"skill_name": "ops", "script_name": "scripts/run.sh"})


# --- where the MCP server listens (LCore additions) ------------------------------------------


def test_mcp_url_needs_a_fixed_port_and_must_be_a_url(tmp_path, plugins):
    directory = skill(tmp_path, "echo")
    path = tmp_path / "lightspeed-stack.yaml"
    for extra, message in (
            ("mcp_url: http://lcore:8765/mcp", "F:3: skills.mcp_url: mcp_url needs a fixed "
                                               "mcp_port (0 picks a new port at every start)"),
            ("{mcp_port: 8765, mcp_url: 'not a url'}", "F:3: skills.mcp_url: Not a valid URL."),
            ("mcp_port: 70000", "F:3: skills.mcp_port: Must be greater than or equal to 0 and "
                                "less than or equal to 65535.")):
        body = extra if extra.startswith("{") else "{" + extra + "}"
        text = BASE + f"skills: {{paths: ['{directory}'], " + body[1:] + "\n"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError) as info:
            load_config(path, plugins)
        assert str(info.value).replace(str(path), "F") == message


async def test_fixed_port_and_advertised_url(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    skill(tmp_path, "echo")
    url = f"http://localhost:{port}/mcp"
    server = SkillsServer(cat.load_catalog([str(tmp_path)]), port=port, url=url)
    await server.start()
    try:
        assert server.tool()["server_url"] == url
        async with httpx.AsyncClient() as http:
            assert (await http.post(url, json={})).status_code == 401
    finally:
        await server.stop()


async def test_fixed_port_with_several_workers_stops_start_up(tmp_path, make_app):
    skill(tmp_path / "skills", "echo")
    app = make_app({"service": {"workers": 2},
                    "skills": {"paths": [str(tmp_path / "skills")], "mcp_port": 8765}})
    with pytest.raises(LifespanError, match=r"a fixed skills\.mcp_port needs service\.workers"):
        async with app.test_app():
            pass


def test_relative_paths_as_upstreams_files_write_them(tmp_path, plugins, monkeypatch):
    # Upstream's own files list `skills/echo` (one skill) or `skills` (all), from the working
    # directory.
    skill(tmp_path / "skills", "echo")
    skill(tmp_path / "skills", "summarize")
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "lightspeed-stack.yaml"
    for listed, names in ((["skills/echo"], ["echo"]), (["skills"], ["echo", "summarize"])):
        path.write_text(BASE + f"skills:\n  paths: {listed}\n", encoding="utf-8")
        config = load_config(path, plugins)
        assert cat.load_catalog(config.skills.paths).names == names


async def test_a_port_in_use_is_a_clear_start_up_error(tmp_path, make_app):
    skill(tmp_path / "skills", "echo")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        app = make_app({"skills": {"paths": [str(tmp_path / "skills")], "mcp_port": port}})
        with pytest.raises(LifespanError, match=f"cannot listen on 127.0.0.1:{port}"):
            async with app.test_app():
                pass


async def test_a_failed_start_up_leaves_no_skills_server(tmp_path, make_app):
    skill(tmp_path / "skills", "echo")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = make_app({"skills": {"paths": [str(tmp_path / "skills")], "mcp_port": port},
                    "mcp_servers": [{"name": "gone", "url": "http://127.0.0.1:9/mcp"}]})
    with pytest.raises(LifespanError, match="MCP server unreachable"):
        async with app.test_app():
            pass
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as http:
            await http.get(f"http://127.0.0.1:{port}/mcp")
