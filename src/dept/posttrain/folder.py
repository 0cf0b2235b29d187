"""A model folder: one usable language model (body + one table + its tokenizer), self-contained, written by dept.

```
MODEL/dept_model.json      format, the body's ModelConfig, vocabulary size, where the model came from
MODEL/model.safetensors    "body.<name>" (the body's state dict) and "embedding.tokens" (+ "embedding.positions")
MODEL/tokenizer.json       the tokenizer whose ids index the table (id 0 = end of document)
```
Every model dept hands out is one: a run's source (`dept.posttrain.from_run`), a consolidated, an adapted or a
fine-tuned model. A folder is written under a temporary name and renamed into place, so a folder with this layout
is complete. `dept export` turns one into a Hugging Face folder; `load_model` reads all three kinds back.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from dept.algorithm.types import TensorDict
from dept.atomic_io import publish_dir
from dept.config import ModelConfig
from dept.data.tokenizer import EOS, EOS_ID
from dept.errors import DeptError
from dept.model import Body, LanguageModel, SourceEmbedding

FORMAT = "dept-model"
VERSION = 1
META = "dept_model.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"


class ModelFolderError(DeptError):
    """A model folder (or what was given as one) cannot be read."""


@dataclass
class ModelFolder:
    model: ModelConfig
    body: TensorDict
    embedding: TensorDict  # "tokens" (vocab × d_model), "positions" when learned
    tokenizer: Tokenizer
    origin: dict = field(default_factory=dict)  # kind (source/consolidated/adapted/finetuned), run, variant, source...
    extra: TensorDict = field(default_factory=dict)  # e.g. a fine-tuned head: "head.weight", "head.bias"

    def __post_init__(self) -> None:
        rows = self.embedding["tokens"].shape[0]
        if rows != self.tokenizer.get_vocab_size():
            raise ModelFolderError(f"the table has {rows} rows but the tokenizer {self.tokenizer.get_vocab_size()} "
                                   "tokens")
        if self.tokenizer.id_to_token(EOS_ID) != EOS:
            raise ModelFolderError(f"the tokenizer's id {EOS_ID} is not the end-of-text token {EOS}")

    @property
    def vocab_size(self) -> int:
        return self.embedding["tokens"].shape[0]

    def language_model(self, device: torch.device | str = "cpu") -> LanguageModel:
        from dept.algorithm.runtime import resolve_device

        device = resolve_device(str(device))  # one line for a device this machine lacks (--device)
        body = Body(self.model)
        body.load_state_dict(self.body)
        emb = SourceEmbedding(self.vocab_size, self.model)
        emb.load_tensors(self.embedding)
        return LanguageModel(body, emb).to(device).eval()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def tensors(self) -> TensorDict:
        out = {f"body.{k}": v for k, v in self.body.items()}
        out.update({f"embedding.{k}": v for k, v in self.embedding.items()})
        out.update(self.extra)
        return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in out.items()}

    def save(self, path: Path, extra_files: dict[str, str] | None = None) -> Path:
        """Write the folder under a temporary name, then rename it into place (replacing an older model folder).
        `extra_files`: name -> text written beside the model (reports, curves)."""
        path = Path(path)
        if path.exists() and not is_model_folder(path) and any(path.iterdir()):
            raise ModelFolderError(f"{path} exists and is not a dept model folder: choose another output folder")
        tmp = path.with_name(f".{path.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(self.tensors(), str(tmp / WEIGHTS))
        self.tokenizer.save(str(tmp / TOKENIZER))
        meta = {"format": FORMAT, "version": VERSION, "model": self.model.model_dump(mode="json"),
                "vocab_size": self.vocab_size, "origin": self.origin}
        (tmp / META).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        publish_dir(tmp, path)
        return path

    @classmethod
    def load(cls, path: Path) -> ModelFolder:
        path = Path(path)
        meta_path = path / META
        if not meta_path.is_file():
            raise ModelFolderError(f"{path}: not a dept model folder (no {META})")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ModelFolderError(f"{meta_path}: not valid JSON ({err})") from None
        if meta.get("format") != FORMAT:
            raise ModelFolderError(f"{meta_path}: format is {meta.get('format')!r}, not {FORMAT!r}")
        if meta.get("version", 0) > VERSION:
            raise ModelFolderError(f"{meta_path}: version {meta['version']} is newer than this dept reads "
                                   f"({VERSION}): upgrade dept")
        for name in (WEIGHTS, TOKENIZER):
            if not (path / name).is_file():
                raise ModelFolderError(f"{path}: missing {name}")
        try:
            model = ModelConfig.model_validate(meta["model"])
        except Exception as err:  # pydantic's message, first line
            raise ModelFolderError(f"{meta_path}: bad model settings: {str(err).splitlines()[0]}") from None
        tensors = load_file(str(path / WEIGHTS))
        body = {k[5:]: v for k, v in tensors.items() if k.startswith("body.")}
        embedding = {k[10:]: v for k, v in tensors.items() if k.startswith("embedding.")}
        extra = {k: v for k, v in tensors.items() if not k.startswith(("body.", "embedding."))}
        with torch.device("meta"):  # names only, no memory
            expected = set(Body(model).state_dict())
        if set(body) != expected or "tokens" not in embedding:
            raise ModelFolderError(f"{path / WEIGHTS}: its tensors do not match the body in {META}")
        return cls(model, body, embedding, Tokenizer.from_file(str(path / TOKENIZER)), meta.get("origin", {}),
                   extra)


def is_model_folder(path: Path) -> bool:
    return (Path(path) / META).is_file()
