"""A signing key of one's own for `jwk-token` set-ups (benchmarks, fuzzing): the public key
written as a JWKS file that `jwk_config.url` can name, and a token it verifies."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def local_jwks(workdir: Path, name: str, *, groups: tuple[str, ...] = ("users",),
               lifetime_s: int = 6 * 3600) -> tuple[Path, str]:
    """A new RSA key: its JWKS at `workdir/jwks.json`, and an RS256 token (key id `name`,
    issuer `<name>-issuer`, audience `lcore`, user `<name>-user`, in `groups`)."""
    from authlib.jose import JsonWebKey, JsonWebToken

    key = JsonWebKey.generate_key("RSA", 2048, is_private=True)
    public: dict[str, Any] = key.as_dict(is_private=False)
    public.update(kid=name, alg="RS256", use="sig")
    jwks = workdir / "jwks.json"
    jwks.write_text(json.dumps({"keys": [public]}))
    now = int(time.time())
    token = JsonWebToken(["RS256"]).encode(
        {"alg": "RS256", "kid": name},
        {"iss": f"{name}-issuer", "aud": "lcore", "iat": now, "exp": now + lifetime_s,
         "user_id": f"{name}-user", "username": name, "groups": list(groups)}, key).decode()
    return jwks, token
