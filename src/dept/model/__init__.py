"""The vocabulary-agnostic body, per-source embeddings, and the language-model view joining them."""

from dept.model.body import Body
from dept.model.embedding import SourceEmbedding
from dept.model.lm import LanguageModel

__all__ = ["Body", "SourceEmbedding", "LanguageModel"]
