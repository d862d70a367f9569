"""LCore plugin lcore-cache-postgres."""
