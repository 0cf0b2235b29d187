"""Export to a Hugging Face Llama folder: transformers computes the same logits and tokens; dept reads it back."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from dept.config import ModelConfig, TokenizerKind
from dept.data.tokenizer import EOS, train_tokenizer
from dept.errors import DeptError
from dept.model import Body, SourceEmbedding
from dept.posttrain.folder import ModelFolder, ModelFolderError
from dept.posttrain.hf import export_folder, import_exported
from dept.posttrain.load import load_model

TEXTS = [
    "The quick brown fox jumps over the lazy dog. It was the best of times.",
    "Le renard brun saute par-dessus le chien paresseux — ça va très bien, merci !",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "日本語のテキストと中文文本。 Emojis: 🙂🚀👩‍💻 and ünïcödé.",
    "def add(x, y):\n    return x + y\n\nfor i in range(10):\n\tprint(i)",
]
SAMPLES = [*TEXTS, "  leading spaces, trailing . , ! ", f"one{EOS}two", "🇫🇷 à l'œuvre… «citation» 𝔘𝔫𝔦"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(iter(TEXTS * 10), TokenizerKind.BPE, 300)


def folder(tokenizer, seed: int = 0, **model) -> ModelFolder:
    cfg = ModelConfig(**{"d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 64, **model})
    g = torch.Generator().manual_seed(seed)
    body = Body(cfg)
    body.reset_parameters(g)
    emb = SourceEmbedding(tokenizer.get_vocab_size(), cfg)
    emb.reset_parameters(g)
    state = {k: v.detach().clone() for k, v in body.state_dict().items()}
    for v in state.values():  # norm gains start at 1: perturb them so a swapped norm would show
        if v.dim() == 1:
            v.add_(0.3 * torch.randn(v.shape, generator=g))
    tables = {k: v.detach().clone() for k, v in emb.tensors().items()}
    return ModelFolder(cfg, state, tables, tokenizer, {"kind": "source", "run": "runs/x", "source": "en"})


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    return pytest.importorskip("transformers")


def test_transformers_gives_dept_logits(tokenizer, tmp_path, offline):
    m = folder(tokenizer, rope_theta=500.0, norm_eps=1e-3, init_std=0.2)  # non-defaults catch mapping errors
    out = export_folder(m, tmp_path / "hf")
    hf = offline.AutoModelForCausalLM.from_pretrained(out).eval()
    assert hf.config.tie_word_embeddings and hf.dtype == torch.float32
    ids = torch.randint(0, m.vocab_size, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = m.language_model()(ids), hf(ids).logits
    assert ours.abs().max() > 1  # the logits are not trivially small
    assert (ours - theirs).abs().max().item() <= 1e-4
    assert torch.equal(hf.lm_head.weight, hf.model.embed_tokens.weight)


def test_tokenizer_round_trip(tokenizer, tmp_path, offline):
    m = folder(tokenizer)
    out = export_folder(m, tmp_path / "hf")
    tok = offline.AutoTokenizer.from_pretrained(out)
    assert (tok.eos_token, tok.pad_token, tok.unk_token) == (EOS, EOS, "<unk>")
    assert tok.eos_token_id == 0 and tok.model_max_length == 64 and len(tok) == m.vocab_size
    for text in SAMPLES:
        ids = tok(text)["input_ids"]
        assert ids == m.encode(text), text  # same ids, no BOS added
        assert tok.decode(ids) == text == m.decode(ids)


def test_import_gives_back_the_same_model(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # writing and reading back need no transformers
    m = folder(tokenizer, seed=3, rope_theta=1234.5, norm_eps=1e-6, init_std=0.05, d_mlp=48)
    m.extra = {"head.weight": torch.randn(3, 32), "head.bias": torch.randn(3)}
    back = import_exported(export_folder(m, tmp_path / "hf"))
    assert back.model == m.model and back.origin == m.origin
    assert back.body.keys() == m.body.keys() and back.embedding.keys() == m.embedding.keys()
    for ours, theirs in ((m.body, back.body), (m.embedding, back.embedding), (m.extra, back.extra)):
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert back.tokenizer.get_vocab() == tokenizer.get_vocab()
    assert all(back.encode(t) == m.encode(t) for t in SAMPLES)
    assert torch.equal(load_model(tmp_path / "hf").body["blocks.1.attn.qkv.weight"], m.body["blocks.1.attn.qkv.weight"])


def test_export_replaces_an_earlier_export_and_refuses_other_folders(tokenizer, tmp_path):
    out = tmp_path / "hf"
    export_folder(folder(tokenizer, seed=1), out)
    m = folder(tokenizer, seed=2)
    export_folder(m, out)  # an earlier export is replaced
    assert torch.equal(import_exported(out).embedding["tokens"], m.embedding["tokens"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temporary folder left behind
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(DeptError, match="not a dept export"):
        export_folder(m, busy)
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]


def test_learned_positions_are_refused(tokenizer, tmp_path):
    with pytest.raises(DeptError, match="model.positions=rope"):
        export_folder(folder(tokenizer, positions="learned"), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_a_folder_from_elsewhere_is_refused(tokenizer, tmp_path):
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 32}))
    with pytest.raises(ModelFolderError, match="gpt2.*model_type is 'gpt2'"):
        import_exported(gpt2)
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 32}))
    with pytest.raises(ModelFolderError, match="no \"dept\" section"):
        import_exported(llama)

    out = export_folder(folder(tokenizer), tmp_path / "hf")
    cfg = json.loads((out / "config.json").read_text())
    cfg["dept"]["model"].update(d_model=64, d_mlp=64)  # settings that no longer fit the weights
    cfg["hidden_size"] = 64
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFolderError, match="has shape"):
        import_exported(out)
    (out / "model.safetensors").unlink()
    with pytest.raises(ModelFolderError, match="missing model.safetensors"):
        import_exported(out)
