"""Loading upstream Lightspeed Core Stack's configuration files with `lcore config check`.

Upstream's files reference what its own end-to-end harness provides: environment variables
(`${env.E2E_LLAMA_HOSTNAME}`...), a run.yaml beside the file, an agent card, skill
directories, secret files. `prepare` copies a file into a work directory and provides the
same, so what is checked is LCore's reading of the configuration, not the harness.

By hand, against a checkout (or a bare mirror) of upstream's repository:

    python -m tests.compat.upstream_configs /path/to/lightspeed-stack
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from lcore_core.cli import main as lcore

ENV_REF = re.compile(r"\$\{env\.([A-Za-z_][A-Za-z0-9_]*)(:[=+-][^}]*)?\}")
# Keys whose value names a file the configuration needs, and what to put there.
FILE_KEYS = ("library_client_config_path", "profile", "agent_card_path", "system_prompt_path",
             "token_path", "api_key_path", "password_path", "tls_certificate_path",
             "tls_key_path", "tls_key_password", "k8s_ca_cert_path", "ca_cert_path")
SPECIAL_HEADER_VALUES = ("client", "kubernetes", "oauth")
# Which of upstream's files are configurations of the service (not of Llama Stack or CI).
PATTERNS = ("tests/e2e/configuration/**/*.yaml", "examples/lightspeed-stack*.yaml",
            "lightspeed-stack.yaml", "tests/configuration/lightspeed-stack*.yaml",
            "tests/configuration/*config*.yaml", "tests/configuration/benchmarks-*.yaml")


def is_service_config(data: Any) -> bool:
    return isinstance(data, dict) and ("llama_stack" in data or "ogx" in data)


def _stub_run_yaml(path: Path) -> None:
    from lcore_core.testing.llama_stack import write_run_yaml

    write_run_yaml(path.parent / f".{path.stem}-state", "http://127.0.0.1:9/v1",
                   name=path.name)
    built = path.parent / f".{path.stem}-state" / path.name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(built.read_text())


def _stub(path: Path, key: str) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if key in ("library_client_config_path", "profile"):
        _stub_run_yaml(path)
    elif key == "agent_card_path":
        path.write_text("name: stub agent\ndescription: provided by the harness\n"
                        "skills: []\n")
    else:
        path.write_text("harness-provided\n")


def _stub_skill(path: Path) -> None:
    if path.exists():
        return
    path.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^a-z0-9-]", "-", path.name.lower()).strip("-") or "skill"
    (path / "SKILL.md").write_text(f"---\nname: {name}\ndescription: provided by the "
                                   f"harness\n---\n\nInstructions.\n")


def _walk(node: Any, key: str, base: Path) -> Any:
    """Provide the files `node` refers to; absolute paths outside /tmp move into `base`."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "paths" and key == "skills" and isinstance(v, list):
                out[k] = [_provide_skill(p, base) for p in v]
            elif k == "authorization_headers" and isinstance(v, dict):
                out[k] = {h: _provide_secret(s, base) for h, s in v.items()}
            else:
                out[k] = _walk(v, k, base)
        return out
    if isinstance(node, list):
        return [_walk(v, key, base) for v in node]
    if key in FILE_KEYS and isinstance(node, str) and "${" not in node:
        path = _inside(node, base)
        _stub(path, key)
        return str(path) if Path(node).is_absolute() else node
    return node


def _inside(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute():
        return base / path
    if str(path).startswith(("/tmp/", tempfile.gettempdir() + "/")):
        return path
    return base / "abs" / path.relative_to("/")


def _provide_skill(value: Any, base: Path) -> Any:
    if not isinstance(value, str):
        return value
    path = _inside(value, base)
    _stub_skill(path)
    return str(path) if Path(value).is_absolute() else value


def _provide_secret(value: Any, base: Path) -> Any:
    if not isinstance(value, str) or value.strip() in SPECIAL_HEADER_VALUES \
            or "${" in value:
        return value
    path = _inside(value, base)
    _stub(path, "token_path")
    return str(path) if Path(value).is_absolute() else value


def env_for(text: str) -> dict[str, str]:
    """A value for every variable the file needs and does not default."""
    env = {}
    for name, default in ENV_REF.findall(text):
        if default or name in os.environ:
            continue
        env[name] = "localhost" if "HOST" in name else f"e2e-{name.lower()}"
    return env


def prepare(src: Path, workdir: Path) -> tuple[Path, dict[str, str]]:
    """A copy of `src` in `workdir` with what upstream's harness provides, and the environment."""
    text = src.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    workdir.mkdir(parents=True, exist_ok=True)
    data = _walk(data, "", workdir)
    dest = workdir / src.name
    # Re-dumped only when a path had to move; otherwise the file is checked byte for byte.
    original = yaml.safe_load(text)
    dest.write_text(text if data == original else yaml.safe_dump(data, sort_keys=False),
                    encoding="utf-8")
    return dest, env_for(text)


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check(src: Path, workdir: Path) -> tuple[int, str]:
    """`lcore config check` on a prepared copy of `src`: exit code and output."""
    path, env = prepare(src, workdir)
    out, err = io.StringIO(), io.StringIO()
    with environment(env), contextlib.chdir(workdir), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        try:
            code = lcore(["config", "check", "-c", str(path)])
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, (out.getvalue() + err.getvalue()).strip()


def upstream_files(root: Path) -> list[tuple[str, Path]]:
    """Upstream's service configuration files under a checkout, or materialised from a bare
    mirror (a directory with HEAD and objects/) into a temporary directory."""
    if (root / "HEAD").is_file() and (root / "objects").is_dir():
        root = _materialise(root)
    found = []
    for pattern in PATTERNS:
        for path in sorted(root.glob(pattern)):
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError:
                continue
            if is_service_config(data):
                found.append((str(path.relative_to(root)), path))
    return sorted(set(found))


def _materialise(git_dir: Path) -> Path:
    out = Path(tempfile.mkdtemp(prefix="upstream-"))
    names = subprocess.run(["git", "--git-dir", str(git_dir), "ls-tree", "-r", "--name-only",
                            "HEAD"], capture_output=True, text=True, check=True).stdout
    for name in names.splitlines():
        if not name.endswith((".yaml", ".yml", ".md", ".txt")):
            continue
        blob = subprocess.run(["git", "--git-dir", str(git_dir), "show", f"HEAD:{name}"],
                              capture_output=True, check=True).stdout
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob)
    return out


def main(argv: list[str]) -> int:
    root = Path(argv[0])
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        files = upstream_files(root)
        for i, (name, path) in enumerate(files):
            code, output = check(path, Path(tmp) / str(i))
            failed += code != 0
            print(f"{'ok  ' if code == 0 else 'FAIL'} {name}")
            if code:
                print("     " + output.replace("\n", "\n     "))
        print(f"{len(files) - failed} of {len(files)} load")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
