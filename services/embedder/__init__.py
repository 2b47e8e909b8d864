"""Embedder service: images and texts to L2-normalised vectors with ONNX Runtime and a dynamic batcher."""
