"""The core tests' fixtures (`write_config`, `make_app`, `serving`), reused for this plugin, and
the loopback API server with LCore's service-account token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.core.conftest import make_app, serving, stack_url, write_config
from tests.plugins.auth_k8s.apiserver import SA_TOKEN, FakeApiServer, self_signed

__all__ = ["api", "certs", "make_app", "serving", "stack_url", "write_config"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("k8s-certs")
    cert, key = self_signed(directory, "apiserver")
    other, _ = self_signed(directory, "someone-else")
    token = directory / "sa-token"
    token.write_text(SA_TOKEN + "\n")
    return {"cert": cert, "key": key, "other_ca": other, "sa_token": token}


@pytest.fixture
def api(certs: dict[str, Path]) -> Iterator[FakeApiServer]:
    server = FakeApiServer(certs["cert"], certs["key"])
    server.users["alice-token"] = {"username": "alice", "uid": "uid-alice",
                                   "groups": ["devs", "system:authenticated"]}
    server.users["bob-token"] = {"username": "bob", "uid": "uid-bob", "groups": ["ops"]}
    server.users["admin-token"] = {"username": "kube:admin", "uid": "",
                                   "groups": ["system:cluster-admins"]}
    server.allowed = {"alice", "kube:admin"}
    yield server
    server.close()
