"""DEPT: pre-training language models with Decoupled Embeddings."""

__version__ = "0.1.0"
