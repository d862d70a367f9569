"""LCore plugin lcore-auth-k8s: `authentication.module: k8s`."""
