"""LCore plugin lcore-cache-sqlite."""
