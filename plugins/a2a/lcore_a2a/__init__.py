"""LCore plugin lcore-a2a."""
