"""LCore plugin lcore-quota."""
