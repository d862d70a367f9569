"""`azure_entra_id`: Entra ID tokens for Llama Stack's Azure OpenAI providers.

As upstream does, LCore obtains an access token with the application's client credentials and
hands it to Llama Stack with each call to an Azure model, as provider data (the
`X-LlamaStack-Provider-Data` header: `azure_api_key` and `azure_api_base`), so the Azure
provider needs no long-lived key. The token is kept until shortly before it expires and
refreshed by one caller at a time.

The token endpoint is `<authority>/<tenant_id>/oauth2/v2.0/token`; the authority is
`https://login.microsoftonline.com` unless `AZURE_AUTHORITY_HOST` names another (as Azure's own
libraries read it: sovereign clouds, or a test's loopback server).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Mapping
from typing import Any

import structlog

from lcore_core.errors import BackendUnavailable

log = structlog.get_logger("lcore.azure")

DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
AUTHORITY_VARIABLE = "AZURE_AUTHORITY_HOST"
PROVIDER_TYPE = "remote::azure"
PROVIDER_DATA_HEADER = "X-LlamaStack-Provider-Data"
# Refresh this long before the token's own expiry, so no call carries a token about to lapse.
EXPIRY_LEEWAY_S = 30
TOKEN_TIMEOUT_S = 30.0
INSTALL_HINT = "pip install 'lcore-core[azure]'"


def token_url(tenant_id: str, environ: Mapping[str, str] | None = None) -> str:
    authority = (environ if environ is not None else os.environ).get(AUTHORITY_VARIABLE)
    authority = (authority or DEFAULT_AUTHORITY).rstrip("/")
    if "://" not in authority:
        authority = f"https://{authority}"
    return f"{authority}/{tenant_id}/oauth2/v2.0/token"


class EntraIdToken:
    """A client-credentials access token, fetched when missing or about to expire."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self._settings = settings
        self._url = token_url(settings["tenant_id"])
        self._token = ""
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    def _fresh(self) -> bool:
        return bool(self._token) and time.time() < self._expires_at

    async def get(self) -> str:
        """The current token; raises `BackendUnavailable` when Entra ID refuses or is down."""
        if self._fresh():
            return self._token
        async with self._lock:
            if not self._fresh():  # another caller may have refreshed it meanwhile
                await self._refresh()
        return self._token

    async def _refresh(self) -> None:
        from authlib.integrations.httpx_client import AsyncOAuth2Client

        settings = self._settings
        try:
            async with AsyncOAuth2Client(settings["client_id"], settings["client_secret"],
                                         scope=settings["scope"],
                                         token_endpoint_auth_method="client_secret_post",
                                         timeout=TOKEN_TIMEOUT_S) as client:
                token = await client.fetch_token(self._url, grant_type="client_credentials")
        except Exception as exc:
            # The reason may quote the endpoint's reply: the log gets it, the client does not.
            log.warning("azure entra id token refused", url=self._url,
                        error=f"{type(exc).__name__}: {exc}")
            raise BackendUnavailable("Unable to obtain an Azure Entra ID token",
                                     "the Azure provider's credentials were refused or the "
                                     "token endpoint is unreachable") from exc
        lifetime = float(token.get("expires_in") or 0)
        expires_at = float(token.get("expires_at") or time.time() + lifetime)
        self._token = str(token["access_token"])
        self._expires_at = expires_at - EXPIRY_LEEWAY_S
        log.info("azure entra id token refreshed",
                 expires_in=round(self._expires_at - time.time()))


class AzureProviderData:
    """Adds the Entra ID token to the Llama Stack calls that reach an Azure provider."""

    def __init__(self, token: EntraIdToken, providers: Mapping[str, str]) -> None:
        self.token = token
        # OGX reads X-OGX-Provider-Data instead (`LlamaStack.ensure_backend` sets it)
        self.header = PROVIDER_DATA_HEADER
        # provider id -> the provider's base URL (provider data wants it beside the key)
        self.providers = dict(providers)

    def base_url(self, model: Any) -> str | None:
        """The Azure provider's URL when `model` (`provider/model`) is one of its models."""
        if not isinstance(model, str):
            return None
        provider = model.split("/", 1)[0]
        if provider in self.providers:
            return self.providers[provider]
        # Upstream's rule: a model id starting with "azure" is an Azure model.
        if model.startswith("azure") and len(self.providers) == 1:
            return next(iter(self.providers.values()))
        return None

    async def headers(self, model: Any, headers: dict[str, str]) -> dict[str, str]:
        """`headers` with the provider data for `model` merged in (unchanged when not Azure)."""
        base = self.base_url(model)
        if base is None:
            return headers
        data: dict[str, Any] = {}
        if self.header in headers:
            data = json.loads(headers[self.header])
        data.update(azure_api_key=await self.token.get(), azure_api_base=base)
        return {**headers, self.header: json.dumps(data)}


async def setup(client: Any, settings: Mapping[str, Any]) -> AzureProviderData | None:
    """Start-up: find Llama Stack's Azure providers and fetch a first token (a wrong secret
    shows in the log at once). None, with a warning, when Llama Stack has no Azure provider."""
    listed = await client.providers.list()
    providers = {}
    for provider in listed:
        if getattr(provider, "provider_type", None) != PROVIDER_TYPE:
            continue
        config = getattr(provider, "config", None) or {}
        base = config.get("base_url") or config.get("api_base")
        if base:
            providers[provider.provider_id] = str(base)
    if not providers:
        log.warning("azure_entra_id is configured but Llama Stack has no remote::azure "
                    "provider with a base_url; no Entra ID token is sent")
        return None
    data = AzureProviderData(EntraIdToken(settings), providers)
    with contextlib.suppress(BackendUnavailable):  # logged; each Azure call tries again
        await data.token.get()
    log.info("azure entra id tokens for providers", providers=sorted(providers))
    return data
