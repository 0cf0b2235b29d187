"""After pre-training: model folders, and what turns a run into models people use (consolidate, adapt,
fine-tune, export to Hugging Face `transformers`, generate)."""
