"""LCore plugin lcore-auth-k8s."""
