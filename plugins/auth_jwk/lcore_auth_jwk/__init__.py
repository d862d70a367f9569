"""LCore plugin lcore-auth-jwk."""
