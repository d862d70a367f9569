"""LCore plugin lcore-quota: token quotas per user and per cluster, reserved before each
LLM call and settled to the real usage after it."""
