"""The JWKS: fetched asynchronously, cached with a TTL, refetched for an unknown `kid` at most
once per `min_interval` so a flood of forged `kid`s cannot hammer the identity provider."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import httpx

with warnings.catch_warnings():
    # authlib >= 1.6 marks authlib.jose as deprecated in favour of joserfc; it still works.
    import authlib.deprecate  # noqa: F401  (it installs an "always" filter on import)

    warnings.simplefilter("ignore")
    from authlib.jose import JsonWebKey

from lcore_core import Unauthorized

log = logging.getLogger("lcore.auth.jwk")

MAX_JWKS_BYTES = 1024 * 1024
FETCH_TIMEOUT_S = 5.0

# The key type each algorithm family verifies with.
KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


def key_type_for(alg: str) -> str | None:
    return KEY_TYPES.get(alg[:2])


class JwksError(Exception):
    """The JWKS could not be fetched or parsed (the reason is safe to log)."""


class Jwks:
    """Keys by `kid` from an http(s) URL or a local file."""

    def __init__(self, source: str, *, ttl: float, min_interval: float) -> None:
        self.source = source
        self.ttl = ttl
        self.min_interval = min_interval
        self._keys: list[Any] = []
        self._loaded = False
        self._fetched_at = 0.0
        self._attempted_at = float("-inf")
        self._lock = asyncio.Lock()
        self._client: httpx.AsyncClient | None = None
        self.fetches = 0

    @property
    def is_url(self) -> bool:
        return self.source.startswith(("http://", "https://"))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def find(self, kid: str | None, alg: str) -> Any:
        """The verification key for a token header; raise `Unauthorized` when there is none."""
        await self._refresh(stale_only=True)
        key = self._select(kid, alg)
        if key is None and kid is not None:
            # Possibly a rotated key: refetch, unless that was done moments ago.
            await self._refresh(stale_only=False)
            key = self._select(kid, alg)
        if key is None:
            raise Unauthorized(cause="Token signed by unknown key")
        return key

    def _select(self, kid: str | None, alg: str) -> Any:
        kty = key_type_for(alg)
        candidates = [k for k in self._keys if k.kty == kty
                      and k.tokens.get("alg") in (None, alg)
                      and k.tokens.get("use") in (None, "sig")]
        if kid is not None:
            same = [k for k in candidates if k.kid == kid]
            return same[0] if len(same) == 1 else None
        # No kid: the first key of the right type, never a trial of every key (a DoS lever).
        return candidates[0] if candidates else None

    async def _refresh(self, *, stale_only: bool) -> None:
        now = time.monotonic()
        if stale_only and self._loaded and now - self._fetched_at < self.ttl:
            return
        async with self._lock:
            now = time.monotonic()
            if stale_only and self._loaded and now - self._fetched_at < self.ttl:
                return  # another request refreshed it meanwhile
            if now - self._attempted_at < self.min_interval:
                if not self._loaded:
                    raise Unauthorized(cause="Authentication keys are unavailable")
                return
            self._attempted_at = now
            try:
                keys = await self._load()
            except JwksError as exc:
                log.warning("JWKS from %s unavailable: %s", self._where(), exc)
                if not self._loaded:
                    raise Unauthorized(cause="Unable to load the authentication keys") from None
                return  # keep serving the keys we have
            self._keys = keys
            self._loaded = True
            self._fetched_at = time.monotonic()
            log.info("JWKS loaded from %s: %d key(s)", self._where(), len(keys))

    def _where(self) -> str:
        return self.source.split("?", 1)[0]

    async def _load(self) -> list[Any]:
        self.fetches += 1
        raw = await (self._fetch() if self.is_url else self._read())
        try:
            data = json.loads(raw)
            keys = data["keys"]
            if not isinstance(keys, list):
                raise TypeError("'keys' is not a list")
        except (ValueError, KeyError, TypeError) as exc:
            raise JwksError(f"not a JWKS document: {exc}") from None
        loaded = []
        for entry in keys:
            # Only public asymmetric keys verify tokens; a symmetric or malformed entry is
            # skipped rather than trusted.
            if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC", "OKP"):
                continue
            try:
                loaded.append(JsonWebKey.import_key(entry))
            except Exception as exc:  # authlib raises various errors for a malformed key
                log.warning("JWKS key %r skipped: %s", entry.get("kid"), exc)
        return loaded

    async def _fetch(self) -> bytes:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=False)
        try:
            async with self._client.stream("GET", self.source,
                                           headers={"Accept": "application/json"}) as resp:
                if resp.status_code != 200:
                    raise JwksError(f"HTTP {resp.status_code}")
                body = bytearray()
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise JwksError(f"larger than {MAX_JWKS_BYTES} bytes")
                return bytes(body)
        except httpx.HTTPError as exc:
            raise JwksError(f"{type(exc).__name__}: {exc}") from None

    async def _read(self) -> bytes:
        path = Path(self.source.removeprefix("file://")).expanduser()
        try:
            return await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            raise JwksError(f"{type(exc).__name__}: {exc.strerror or exc}") from None
