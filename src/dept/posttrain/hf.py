"""Export a model folder as a Hugging Face `transformers` Llama folder, and read such an export back.

```
OUT/config.json               LlamaConfig (tied embeddings, no biases, silu) + "dept": the exact ModelConfig, origin
OUT/generation_config.json    bos/eos/pad = 0 (dept's end-of-text token)
OUT/model.safetensors         Llama parameter names, fp32
OUT/tokenizer.json            the model's tokenizer, unchanged
OUT/tokenizer_config.json     PreTrainedTokenizerFast, eos = pad = <|endoftext|>, unk = <unk>, no BOS added
OUT/special_tokens_map.json
OUT/README.md                 a short model card naming where the model came from
OUT/dept_extra.safetensors    only when the model carries extra tensors (e.g. a fine-tuned head): dept reads
                              them back, transformers ignores them
```
Writing needs neither `transformers` nor a network (the JSON is written here); loading the folder with
`AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained` needs `transformers` only.

The mapping is exact: dept's body *is* a Llama decoder (pre-norm RMSNorm, SwiGLU with silu, no biases, RoPE in the
rotate-half layout with the angle table cat([angles, angles]), q/k/v viewed as (heads, head_dim) in that order, the
1/sqrt(head_dim) softmax scale) and the head is tied to the token table. The fused `qkv` weight splits row-wise into
q_proj, k_proj, v_proj without any head permutation (HF's `rotate_half` is dept's `apply_rope`), and the fused
`gate_up` into gate_proj, up_proj. `lm_head.weight` is not written: with `tie_word_embeddings` transformers ties it
to `model.embed_tokens.weight`, as its own `save_pretrained` does.

Learned positions (`model.positions == "learned"`: RMSNorm + SwiGLU + a learned absolute position table added to
the token vectors) are refused. No causal-LM architecture in transformers has that combination: GPT-2,
GPT-Neo, GPT-BigCode, OPT, BioGPT and the Whisper/BART-style decoders with learned positions all use LayerNorm and
GELU/ReLU MLPs (OPT also offsets its position ids by 2); Llama, Mistral, Qwen and the other RMSNorm/SwiGLU
decoders only have rotary positions (some allow "no RoPE" layers, none an absolute table). The one stock model with
RMSNorm, SwiGLU and a learned position table, AIMv2's text tower (`Aimv2TextModel`), is a CLIP-style text encoder
with no language-model head and no `AutoModelForCausalLM` entry. Exporting would therefore need custom modelling
code (`trust_remote_code`), which this export does not ship.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer

from dept.atomic_io import publish_dir
from dept.config import ModelConfig
from dept.data.tokenizer import EOS, EOS_ID, UNK
from dept.errors import DeptError
from dept.posttrain.folder import ModelFolder, ModelFolderError

FORMAT = "dept-hf-export"
VERSION = 1
CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
WEIGHTS = "model.safetensors"
EXTRA = "dept_extra.safetensors"
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
CARD = "README.md"

LEARNED_POSITIONS = ("no transformers architecture matches an RMSNorm/SwiGLU body with learned positions exactly; "
                     "export needs model.positions=rope")

# dept body parameter -> Llama parameter (per layer, "{i}" = layer index); qkv and gate_up are split separately.
_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.proj.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.down.weight": "mlp.down_proj.weight",
}


def llama_config(model: ModelFolder) -> dict:
    """config.json: what both transformers 4.4x (`rope_theta`, `torch_dtype`) and 5.x (`rope_parameters`) read."""
    cfg = model.model
    theta = float(cfg.rope_theta)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": model.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_heads,
        "head_dim": cfg.d_model // cfg.n_heads,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": EOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": EOS_ID,
        "torch_dtype": "float32",
        "tokenizer_class": "PreTrainedTokenizerFast",
        "dept": {"format": FORMAT, "version": VERSION, "origin": model.origin,
                 "model": cfg.model_dump(mode="json")},
    }


def llama_tensors(model: ModelFolder) -> dict[str, torch.Tensor]:
    """The body and token table under Llama names, split from dept's fused projections, fp32 and contiguous."""
    cfg = model.model
    d, hidden = cfg.d_model, cfg.mlp_hidden
    body = {k: v.detach().to("cpu", torch.float32) for k, v in model.body.items()}
    out: dict[str, torch.Tensor] = {"model.embed_tokens.weight": model.embedding["tokens"].detach().to(
        "cpu", torch.float32)}
    for i in range(cfg.n_layers):
        src, dst = f"blocks.{i}.", f"model.layers.{i}."
        q, k, v = body[src + "attn.qkv.weight"].split(d, dim=0)  # rows: q heads, k heads, v heads
        out[dst + "self_attn.q_proj.weight"] = q
        out[dst + "self_attn.k_proj.weight"] = k
        out[dst + "self_attn.v_proj.weight"] = v
        gate, up = body[src + "mlp.gate_up.weight"].split(hidden, dim=0)
        out[dst + "mlp.gate_proj.weight"] = gate
        out[dst + "mlp.up_proj.weight"] = up
        for ours, theirs in _LAYER.items():
            out[dst + theirs] = body[src + ours]
    out["model.norm.weight"] = body["final_norm.weight"]
    return {k: v.clone().contiguous() for k, v in out.items()}  # no shared storage: safetensors refuses it


def _tokenizer_files(model: ModelFolder) -> dict[str, dict]:
    added = {}
    for idx, tok in sorted(model.tokenizer.get_added_tokens_decoder().items()):
        added[str(idx)] = {"content": tok.content, "lstrip": tok.lstrip, "rstrip": tok.rstrip,
                           "normalized": tok.normalized, "single_word": tok.single_word, "special": tok.special}
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": EOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "pad_token": EOS,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,  # byte-level: decoding must give back the exact text
        "model_max_length": model.model.max_seq_len,
        "model_input_names": ["input_ids", "attention_mask"],
    }
    special = {"bos_token": EOS, "eos_token": EOS, "unk_token": UNK, "pad_token": EOS}
    return {TOKENIZER_CONFIG: tokenizer_config, SPECIAL_TOKENS_MAP: special}


def _card(model: ModelFolder) -> str:
    cfg = model.model
    origin = model.origin or {}
    described = ", ".join(f"{k}: {v}" for k, v in origin.items()) or "not recorded"
    params = sum(v.numel() for v in model.body.values()) + model.embedding["tokens"].numel()
    return (
        "---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags:\n- dept\n- llama\n---\n\n"
        "# dept model (Llama format)\n\n"
        f"Exported by dept from a DEPT model folder. Origin: {described}.\n\n"
        f"- {cfg.n_layers} layers, width {cfg.d_model}, {cfg.n_heads} heads, SwiGLU hidden {cfg.mlp_hidden}, "
        f"RoPE theta {cfg.rope_theta:g}, context {cfg.max_seq_len} tokens\n"
        f"- vocabulary {model.vocab_size} (byte-level; id 0 = `{EOS}`, the end-of-document token), "
        f"{params:,} parameters, tied input/output embeddings\n\n"
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        "tok = AutoTokenizer.from_pretrained(PATH)\nmodel = AutoModelForCausalLM.from_pretrained(PATH)\n```\n\n"
        "No BOS token is added; documents are separated by `<|endoftext|>`. "
        "`dept` reads this folder back exactly (`config.json` holds its settings under `dept`).\n"
    )


def is_export(path: Path) -> bool:
    """A folder this module wrote (config.json with a "dept" export marker)."""
    try:
        cfg = json.loads((Path(path) / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and isinstance(cfg.get("dept"), dict) and cfg["dept"].get("format") == FORMAT


def export_folder(model: ModelFolder, out: Path) -> Path:
    """Write `model` as a Hugging Face Llama folder at `out` (atomically: a temp sibling renamed into place)."""
    out = Path(out)
    if model.model.positions != "rope":
        raise DeptError(LEARNED_POSITIONS)
    if out.exists() and not out.is_dir():
        raise DeptError(f"{out} exists and is not a folder: choose another output folder")
    if out.is_dir() and any(out.iterdir()) and not is_export(out):
        raise DeptError(f"{out} exists, is not empty and is not a dept export: choose another output folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        save_file(llama_tensors(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        if model.extra:
            extra = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.extra.items()}
            save_file(extra, str(tmp / EXTRA), metadata={"format": "pt"})
        model.tokenizer.save(str(tmp / TOKENIZER))
        files = {CONFIG: llama_config(model),
                 GENERATION_CONFIG: {"bos_token_id": EOS_ID, "eos_token_id": EOS_ID, "pad_token_id": EOS_ID},
                 **_tokenizer_files(model)}
        for name, obj in files.items():
            (tmp / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / CARD).write_text(_card(model), encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700 (and safetensors its files 0600): a folder to share
        for file in tmp.iterdir():
            os.chmod(file, 0o644)
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check(ok: bool, path: Path, what: str) -> None:
    if not ok:
        raise ModelFolderError(f"{path}: not a dept-exported Llama folder ({what})")


def import_exported(path: Path) -> ModelFolder:
    """Read a folder written by `export_folder` back into a ModelFolder (json + safetensors, no transformers)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelFolderError(f"{path}: no such folder")
    cfg_path = path / CONFIG
    _check(cfg_path.is_file(), path, f"no {CONFIG}")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFolderError(f"{cfg_path}: not valid JSON ({err})") from None
    _check(isinstance(cfg, dict), path, f"{CONFIG} is not a JSON object")
    _check(cfg.get("model_type") == "llama", path, f"model_type is {cfg.get('model_type')!r}, not 'llama'")
    meta = cfg.get("dept")
    _check(isinstance(meta, dict) and meta.get("format") == FORMAT, path,
           f"{CONFIG} has no \"dept\" section: it was not written by dept export")
    if meta.get("version", 0) > VERSION:
        raise ModelFolderError(f"{cfg_path}: export version {meta['version']} is newer than this dept reads "
                               f"({VERSION}): upgrade dept")
    try:
        model = ModelConfig.model_validate(meta.get("model"))
    except Exception as err:  # pydantic's message, first line
        raise ModelFolderError(f"{cfg_path}: bad dept model settings: {str(err).splitlines()[0]}") from None
    _check(model.positions == "rope", path, "dept settings say learned positions, which no export has")
    d, hidden = model.d_model, model.mlp_hidden
    agrees = {"hidden_size": d, "num_hidden_layers": model.n_layers, "num_attention_heads": model.n_heads,
              "num_key_value_heads": model.n_heads, "intermediate_size": hidden, "tie_word_embeddings": True}
    for key, want in agrees.items():
        _check(cfg.get(key, want) == want, path, f"{key} is {cfg.get(key)!r} but the dept settings give {want!r}")
    for key, want in (("rms_norm_eps", model.norm_eps), ("rope_theta", model.rope_theta)):
        have = cfg.get(key, want)
        _check(isinstance(have, int | float) and math.isclose(have, want, rel_tol=1e-9), path,
               f"{key} is {have!r} but the dept settings give {want!r}")
    for name in (WEIGHTS, TOKENIZER):
        _check((path / name).is_file(), path, f"missing {name}")

    tensors = _read_safetensors(path / WEIGHTS)
    vocab = cfg.get("vocab_size")
    expected = llama_shapes(model, vocab if isinstance(vocab, int) else None)
    head = tensors.pop("lm_head.weight", None)  # tied: another tool may have written the table twice
    _check(head is None or torch.equal(head, tensors.get("model.embed_tokens.weight", head)), path,
           "lm_head.weight differs from model.embed_tokens.weight, but dept ties them")
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    _check(not missing and not unexpected, path,
           f"{WEIGHTS} tensors do not match the settings: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, shape in expected.items():
        have = tuple(tensors[name].shape)
        if name == "model.embed_tokens.weight" and not isinstance(cfg.get("vocab_size"), int):
            shape = (have[0] if have else 0, d)  # rows: whatever the tokenizer has (checked below)
        _check(have == shape, path, f"{name} has shape {have}, expected {shape}")

    body: dict[str, torch.Tensor] = {}
    for i in range(model.n_layers):
        src, dst = f"model.layers.{i}.", f"blocks.{i}."
        body[dst + "attn.qkv.weight"] = torch.cat([tensors[src + f"self_attn.{p}_proj.weight"] for p in "qkv"])
        body[dst + "mlp.gate_up.weight"] = torch.cat([tensors[src + "mlp.gate_proj.weight"],
                                                      tensors[src + "mlp.up_proj.weight"]])
        for ours, theirs in _LAYER.items():
            body[dst + ours] = tensors[src + theirs]
    body["final_norm.weight"] = tensors["model.norm.weight"]
    extra = _read_safetensors(path / EXTRA) if (path / EXTRA).is_file() else {}
    try:
        tokenizer = Tokenizer.from_file(str(path / TOKENIZER))
    except Exception as err:  # tokenizers raises a bare Exception
        raise ModelFolderError(f"{path / TOKENIZER}: not a readable tokenizer ({str(err).splitlines()[0]})") from None
    try:
        return ModelFolder(model, body, {"tokens": tensors["model.embed_tokens.weight"]}, tokenizer,
                           meta.get("origin") or {}, extra)
    except ModelFolderError as err:
        raise ModelFolderError(f"{path}: {err}") from None


def llama_shapes(model: ModelConfig, vocab_size: int | None = None) -> dict[str, tuple[int, ...]]:
    """The Llama tensor names and shapes an export of `model` holds (the table's rows = `vocab_size`)."""
    d, hidden = model.d_model, model.mlp_hidden
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab_size or 0, d), "model.norm.weight": (d,)}
    for i in range(model.n_layers):
        p = f"model.layers.{i}."
        shapes.update({p + f"self_attn.{x}_proj.weight": (d, d) for x in "qkvo"})
        shapes.update({p + "mlp.gate_proj.weight": (hidden, d), p + "mlp.up_proj.weight": (hidden, d),
                       p + "mlp.down_proj.weight": (d, hidden), p + "input_layernorm.weight": (d,),
                       p + "post_attention_layernorm.weight": (d,)})
    return shapes


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFolderError(f"{file}: not a readable safetensors file ({err})") from None
