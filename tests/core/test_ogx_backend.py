"""OGX 1.x as a backend: the configuration keys, backend detection and provider-data header.

The running-server behaviour (queries, the safety API probe and its one warning) is in
tests/e2e/test_ogx.py against a real OGX.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lcore_core.azure import AzureProviderData
from lcore_core.config import ConfigError, load_config
from lcore_core.llama import (
    SAFETY_UNAVAILABLE,
    _http_client,
    backend_of_version,
    provider_data_header,
)
from lcore_core.plugins import load_plugins
from lcore_core.testing.ogx import self_signed_cert


def _load(tmp_path: Path, llama: str):
    path = tmp_path / "lightspeed-stack.yaml"
    path.write_text(f"name: t\nllama_stack:\n  url: https://127.0.0.1:8321\n{llama}\n")
    return path, lambda: load_config(path, load_plugins(entrypoints=False))


def _errors(tmp_path: Path, extra: str) -> list[str]:
    path, load = _load(tmp_path, extra)
    with pytest.raises(ConfigError) as info:
        load()
    return str(info.value).replace(str(path), "F").splitlines()


def test_backend_defaults_to_auto_and_no_ca(tmp_path):
    _, load = _load(tmp_path, "")
    settings = load().llama_stack
    assert settings.backend == "auto"
    assert settings.ca_cert_path is None


def test_backend_and_ca_cert_load(tmp_path):
    cert, _ = self_signed_cert(tmp_path / "tls")
    _, load = _load(tmp_path, f"  backend: ogx\n  ca_cert_path: {cert}")
    settings = load().llama_stack
    assert (settings.backend, settings.ca_cert_path) == ("ogx", str(cert))


def test_unknown_backend_is_named_with_file_and_key(tmp_path):
    [line] = _errors(tmp_path, "  backend: llamastack")
    assert line.startswith("F:4: llama_stack.backend: ")
    assert "auto" in line and "ogx" in line


def test_missing_ca_cert_file(tmp_path):
    assert _errors(tmp_path, "  ca_cert_path: /nonexistent/ca.pem") == [
        "F:4: llama_stack.ca_cert_path: file '/nonexistent/ca.pem' does not exist"]


def test_ca_cert_file_without_a_certificate(tmp_path):
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    assert _errors(tmp_path, f"  ca_cert_path: {bogus}") == [
        f"F:4: llama_stack.ca_cert_path: file '{bogus}' holds no PEM certificate"]


@pytest.mark.parametrize(("version", "backend"), [
    ("0.7.1", "llama_stack"), ("0.2.22", "llama_stack"), ("1.5.0", "ogx"), ("v1.0.2", "ogx"),
    ("2.0.0rc1", "ogx"), ("", "llama_stack"), ("unknown", "llama_stack"),
])
def test_backend_from_version(version, backend):
    assert backend_of_version(version) == backend


def test_provider_data_header_follows_the_backend():
    assert provider_data_header("ogx") == "X-OGX-Provider-Data"
    assert provider_data_header("llama_stack") == "X-LlamaStack-Provider-Data"
    assert provider_data_header(None) == "X-LlamaStack-Provider-Data"


class _Token:
    async def get(self) -> str:
        return "entra-token"


async def test_azure_provider_data_goes_in_the_ogx_header():
    data = AzureProviderData(_Token(), {"azure": "https://example.openai.azure.com"})
    data.header = provider_data_header("ogx")
    headers = await data.headers("azure/gpt-4o", {"X-OGX-Provider-Data": '{"other": 1}'})
    assert "X-LlamaStack-Provider-Data" not in headers
    assert json.loads(headers["X-OGX-Provider-Data"]) == {
        "other": 1, "azure_api_key": "entra-token",
        "azure_api_base": "https://example.openai.azure.com"}


async def test_ca_cert_verifies_a_real_tls_server(tmp_path):
    """The client built for ca_cert_path trusts the server whose certificate it names, and a
    client without it does not."""
    import asyncio
    import ssl

    cert, key = self_signed_cert(tmp_path / "tls")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    url = f"https://127.0.0.1:{port}"
    try:
        trusting = _http_client(url, str(cert))
        assert (await trusting.get(url)).text == "ok"
        await trusting.aclose()
        default = _http_client(url, None)
        with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
            await default.get(url)
        await default.aclose()
    finally:
        server.close()


def test_safety_warning_names_llama_guard_and_lcore_shields():
    assert "Llama Guard" in SAFETY_UNAVAILABLE and "LCore's own shields" in SAFETY_UNAVAILABLE
