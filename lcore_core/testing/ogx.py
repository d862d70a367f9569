"""Run a real OGX 1.x server (Llama Stack's successor), offline, against the scripted LLM.

OGX lives in its own virtual environment (``make install-ogx`` builds ``.venv-ogx``): its pins
conflict with Llama Stack 0.7's. ``OgxServer`` runs ``ogx stack run`` from it on a free port with
TLS (OGX refuses plain HTTP unless told ``--insecure``), using a self-signed certificate written
with ``cryptography``; clients verify it with :attr:`OgxServer.ca_cert`.

The run configuration mirrors :mod:`lcore_core.testing.llama_stack`'s: the scripted LLM as the
OpenAI-compatible inference provider, faiss vector stores, local files, file search and MCP
tools. OGX has no safety API, so there are no shields.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path
from typing import Any

import httpx
import yaml

from lcore_core.testing.llama_stack import (
    LlamaStackServer,
    _run_config,
    free_port,
    stack_environment,
)

__all__ = ["OgxServer", "ogx_available", "ogx_environment", "ogx_python", "self_signed_cert",
           "write_ogx_run_yaml"]

#: `make install-ogx` puts OGX here, in the project root.
OGX_VENV = Path(__file__).resolve().parents[2] / ".venv-ogx"


def ogx_python() -> Path:
    """The interpreter of OGX's venv (``$LCORE_OGX_VENV`` or the project's ``.venv-ogx``)."""
    venv = Path(os.environ.get("LCORE_OGX_VENV") or OGX_VENV)
    return venv / "bin" / "python"


def ogx_available() -> bool:
    """Whether OGX's venv exists (the e2e ``ogx`` mode runs only then)."""
    python = ogx_python()
    return python.exists() and python.with_name("ogx").exists()


def self_signed_cert(directory: Path | str, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """Write a self-signed certificate for ``host`` (and localhost) and its key; return both
    paths. The certificate is its own CA: give it to clients as the CA file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "ogx-cert.pem", directory / "ogx-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def _ogx_config(workdir: Path, llm_base_url: str, embedding_dimension: int,
                cert: Path, key: Path) -> dict[str, Any]:
    config = _run_config(workdir, llm_base_url, embedding_dimension, None)
    # No safety API in OGX; conversations are part of its responses API.
    config["apis"] = ["inference", "responses", "vector_io", "files", "file_processors",
                      "tool_runtime"]
    # OGX turns files into chunks through its file_processors API (pypdf: PDF and text).
    config["providers"]["file_processors"] = [
        {"provider_id": "pypdf", "provider_type": "inline::pypdf"}]
    config["providers"].pop("safety")
    config["registered_resources"].pop("shields")
    config.pop("safety")
    config["distro_name"] = "lcore-testing-ogx"
    builtin = config["providers"]["responses"][0]["config"]
    builtin["persistence"] = {"responses": builtin["persistence"]["responses"]}
    sql = {"backend": "sql_default"}
    stores = config["storage"]["stores"]
    stores["prompts"] = {"table_name": "prompts", **sql}
    stores["connectors"] = {"table_name": "connectors", **sql}
    config["server"] = {"host": "127.0.0.1", "port": 8321,
                        "tls_certfile": str(cert), "tls_keyfile": str(key)}
    return config


def write_ogx_run_yaml(workdir: Path | str, llm_base_url: str, *,
                       embedding_dimension: int = 384) -> Path:
    """Write OGX's run configuration (and its TLS certificate) under ``workdir``."""
    workdir = Path(workdir).resolve()
    (workdir / "files").mkdir(parents=True, exist_ok=True)
    cert, key = self_signed_cert(workdir / "tls")
    path = workdir / "ogx-run.yaml"
    config = _ogx_config(workdir, llm_base_url, embedding_dimension, cert, key)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def ogx_environment(workdir: Path | str) -> dict[str, str]:
    """The environment OGX (a server, or LCore in library mode) runs in from its own venv:
    offline, its state under ``workdir``, nothing of this venv's leaking in."""
    workdir = Path(workdir)
    env = {**os.environ, **stack_environment(workdir),
           "OGX_CONFIG_DIR": str(workdir / "ogx-home"),
           "OGX_LOG_FORMAT": "json",
           "OGX_DISABLE_VERSION_CHECK": "1"}
    for name in ("OGX_PORT", "LLAMA_STACK_PORT", "VIRTUAL_ENV", "PYTHONPATH"):
        env.pop(name, None)
    return env


class OgxServer(LlamaStackServer):
    """``ogx stack run`` from OGX's venv on 127.0.0.1 over https; ``start()`` waits for
    ``/v1/health``, ``stop()`` ends its process group."""

    def __init__(self, run_yaml: Path | str, port: int | None = None, *,
                 startup_timeout: float = 120.0, log_path: Path | str | None = None) -> None:
        super().__init__(run_yaml, port or free_port(), startup_timeout=startup_timeout,
                         log_path=log_path or Path(run_yaml).resolve().parent / "ogx.log")
        self.ca_cert = self.workdir / "tls" / "ogx-cert.pem"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [str(ogx_python().with_name("ogx")), "stack", "run", str(self.run_yaml),
                "--port", str(self.port)]

    def environment(self) -> dict[str, str]:
        return ogx_environment(self.workdir)

    def http_client(self) -> httpx.Client:
        verify = ssl.create_default_context(cafile=str(self.ca_cert))
        return httpx.Client(timeout=2.0, trust_env=False, verify=verify)
