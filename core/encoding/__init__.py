"""Prompt -> context: MiniLM encoders (torch, ONNX), the projection, the embedding caches."""
