"""Evaluation (per-source loss, perplexity, bits per byte) and communication/memory accounting."""
