"""Offline replay of the paper's protocol over recorded rewards and costs (no encoder, no Ray)."""
