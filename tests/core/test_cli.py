"""The installed `lcore` console script, run as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lcore_core import __version__

LCORE = Path(sys.executable).parent / "lcore"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lightspeed-stack.yaml"

pytestmark = pytest.mark.skipif(not LCORE.exists(), reason="lcore console script not installed")


def lcore(*args: str, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LCORE_")}
    environ.update(env or {})
    return subprocess.run([str(LCORE), *args], capture_output=True, text=True, env=environ,
                          cwd=cwd, timeout=60, check=False)


def test_version():
    result = lcore("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"lcore {__version__}"


def test_generate_prints_a_configuration_that_checks(tmp_path):
    generated = lcore("config", "generate")
    assert generated.returncode == 0
    assert "quota_handlers" in generated.stdout  # the commented plugin sections are there
    path = tmp_path / "generated.yaml"
    path.write_text(generated.stdout)
    checked = lcore("config", "check", "-c", str(path))
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == (f"{path}: OK (authentication: noop, conversation cache: "
                                      f"memory)")


def test_generate_to_a_file(tmp_path):
    path = tmp_path / "out.yaml"
    result = lcore("config", "generate", "-o", str(path))
    assert result.returncode == 0
    assert path.read_text() == lcore("config", "generate").stdout


def test_check_good_file():
    result = lcore("config", "check", "-c", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_check_bad_file_exits_2_with_file_line_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nllama_stack:\n  url: http://localhost:8321\nservice:\n"
                    "  port: 70000\n  hots: example.com\n")
    result = lcore("config", "check", "-c", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"{path}:5: service.port: Must be greater than or equal to 1" in result.stderr
    assert f"{path}:6: service.hots: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_prints_warnings_and_passes(tmp_path, monkeypatch, capsys):
    from lcore_core.cli import main
    from lcore_core.config import schema

    # An action of an upstream endpoint LCore does not serve (a made-up one: the list shrinks).
    monkeypatch.setitem(schema.UPSTREAM_ACTIONS, "manage_gadgets", "gadgets")
    path = tmp_path / "warn.yaml"
    path.write_text("name: x\nllama_stack:\n  url: http://localhost:8321\nauthorization:\n"
                    "  access_rules:\n    - {role: x, actions: [manage_gadgets]}\n")
    monkeypatch.delenv("LCORE_CONFIG", raising=False)
    assert main(["config", "check", "-c", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "OK" in out
    assert (f"warning: {path}:6: authorization.access_rules[0].actions[0]: action "
            f"'manage_gadgets' grants nothing in LCore") in err


def test_check_missing_file_exits_2(tmp_path):
    result = lcore("config", "check", "-c", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert "configuration file not found" in result.stderr


def test_serve_with_bad_file_exits_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("llama_stack:\n  url: http://localhost:8321\nauthentication:\n"
                    "  module: nosuch\n")
    result = lcore("serve", "-c", str(path))
    assert result.returncode == 2
    assert f"{path}:4: authentication.module: unknown authentication module 'nosuch'" in (
        result.stderr)


def test_dump_masks_secrets(tmp_path):
    path = tmp_path / "secret.yaml"
    path.write_text("llama_stack:\n  url: http://localhost:8321\n  api_key: ${env.LS_KEY}\n"
                    "database:\n  postgres:\n    db: lightspeed\n    user: ls\n"
                    "    password: ${env.LS_DB_PASSWORD}\n")
    result = lcore("config", "dump", "-c", str(path),
                   env={"LS_DB_PASSWORD": "hunter2-db", "LS_KEY": "hunter2-key"})
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout
    assert "hunter2" not in result.stderr
    dumped = json.loads(result.stdout)
    assert dumped["database"]["postgres"]["password"] == "*****"
    assert dumped["database"]["postgres"]["user"] == "ls"
    assert dumped["llama_stack"]["api_key"] == "*****"
    assert dumped["llama_stack"]["url"] == "http://localhost:8321"


def test_dump_masks_credentials_inside_urls(tmp_path):
    path = tmp_path / "urls.yaml"
    path.write_text("llama_stack:\n  url: http://ls:hunter2-pw@localhost:8321/\n"
                    "mcp_servers:\n  - name: a\n"
                    "    url: https://tools.example/mcp?api_key=hunter2-k&region=eu&token=\n"
                    "  - name: b\n    url: https://hunter2-user@tools.example/mcp\n")
    result = lcore("config", "dump", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout
    dumped = json.loads(result.stdout)
    assert dumped["llama_stack"]["url"] == "http://ls:*****@localhost:8321/"
    assert [s["url"] for s in dumped["mcp_servers"]] == [
        "https://tools.example/mcp?api_key=*****&region=eu&token=",
        "https://*****@tools.example/mcp"]


def test_dump_uses_lcore_config_env(tmp_path):
    result = lcore("config", "dump", env={"LCORE_CONFIG": str(EXAMPLE)})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["name"] == "Lightspeed Core Service (LCS)"


def test_plugins_list():
    result = lcore("plugins", "list", "-c", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"lcore_core.builtins  (lcore-core {__version__})" in lines
    assert "    auth provider: noop  [selected]" in lines
    assert "    auth provider: noop-with-token" in lines
    assert "    auth provider: api-key-token" in lines
    assert "    auth provider: rh-identity" in lines
    assert "    cache backend: memory  [selected]" in lines
    assert "    cache backend: noop" in lines


def test_plugins_list_json(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text("llama_stack:\n  url: http://localhost:8321\nauthentication:\n"
                    "  module: api-key-token\n  api_key_config:\n    api_key: k\n"
                    "conversation_cache:\n  type: noop\n")
    result = lcore("plugins", "list", "--json", "-c", str(path))
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert listing["config_error"] is None
    [builtins] = [p for p in listing["plugins"] if p["name"] == "lcore_core.builtins"]
    assert builtins["distribution"] == "lcore-core"
    assert builtins["error"] is None
    assert {(p["kind"], p["name"], p["selected"]) for p in builtins["provides"]} == {
        ("auth provider", "noop", False),
        ("auth provider", "noop-with-token", False),
        ("auth provider", "api-key-token", True),
        ("auth provider", "rh-identity", False),
        ("cache backend", "memory", False),
        ("cache backend", "noop", True),
    }


def test_plugins_list_reports_a_bad_configuration(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("llama_stack:\n  url: http://localhost:8321\nbogus: 1\n")
    result = lcore("plugins", "list", "--json", "-c", str(path))
    listing = json.loads(result.stdout)
    assert listing["config_error"].startswith(f"{path}:3: bogus: unknown section")
    [builtins] = [p for p in listing["plugins"] if p["name"] == "lcore_core.builtins"]
    assert not any(p["selected"] for p in builtins["provides"])


def test_plugins_list_shows_the_six_installed_plugins():
    # `make test` installs every plugin under plugins/; each must be discovered by entry point.
    result = lcore("plugins", "list", "--json", "-c", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    plugins = json.loads(result.stdout)["plugins"]
    listing = {p["distribution"]: p for p in plugins}
    for dist in ("lcore-auth-k8s", "lcore-auth-jwk", "lcore-cache-sqlite",
                 "lcore-cache-postgres", "lcore-quota", "lcore-a2a"):
        assert dist in listing, f"{dist} is not discovered"
        assert listing[dist]["error"] is None
    # And each names the providers it adds, under the names the YAML selects them by.
    # (lcore-core registers more than one built-in plugin: all of them count.)
    provided = {(p["kind"], p["name"]): plugin["distribution"] for plugin in plugins
                for p in plugin["provides"]}
    assert provided[("auth provider", "jwk-token")] == "lcore-auth-jwk"
    assert provided[("auth provider", "k8s")] == "lcore-auth-k8s"
    assert provided[("cache backend", "sqlite")] == "lcore-cache-sqlite"
    assert provided[("cache backend", "postgres")] == "lcore-cache-postgres"
    assert provided[("auth provider", "noop")] == "lcore-core"


def test_plugin_adds_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    """A plugin's `lcore_cli_commands` adds a subcommand whose handler's status is the exit."""
    from lcore_core import cli, hookimpl
    from lcore_core.plugins import load_plugins

    seen: list[str] = []

    class Hello:
        @hookimpl
        def lcore_cli_commands(self, subparsers):  # type: ignore[no-untyped-def]
            parser = subparsers.add_parser("hello", help="say hello")
            parser.add_argument("name")
            parser.set_defaults(handler=lambda args: seen.append(args.name) or 7)

    plugins = load_plugins(entrypoints=False, extra=[Hello()])
    args = cli.build_parser(plugins).parse_args(["hello", "world"])
    assert args.handler(args) == 7
    assert seen == ["world"]
    with pytest.raises(SystemExit):
        cli.build_parser(None).parse_args(["hello", "world"])
    capsys.readouterr()
