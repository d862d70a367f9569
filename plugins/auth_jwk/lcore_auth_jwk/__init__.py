"""LCore plugin lcore-auth-jwk: `authentication.module: jwk-token`."""
