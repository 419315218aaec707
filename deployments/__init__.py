"""Thin Ray Serve deployments, one per file, and the provider clients."""
