"""Typed, validated run settings: one class per concern, loaded from YAML with `a.b=value` overrides.

Every field has a description (shown by `dept config-help`). Unknown keys and wrong types are refused with one
line naming the key and the file. The resolved config is written into every run folder and checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from dept.atomic_io import write_text_atomic
from dept.errors import ConfigError

# A source's name names its folders (prepared data, state, a site's files): no separator, no leading dot, so no
# name from a config, a command line or a peer's message can point outside the folder it is used in.
SOURCE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


def is_source_name(name: object) -> bool:
    return isinstance(name, str) and re.match(SOURCE_NAME, name) is not None


class Strict(BaseModel):
    # inf/nan can only train to NaN (a learning rate, an init std, RoPE's theta, an eps): refused at load
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_enum_values=False, allow_inf_nan=False)


class Variant(StrEnum):
    GLOB = "glob"
    TRIM = "trim"
    SPEC = "spec"
    SPEC_OPT = "spec_opt"
    STD = "std"
    ACT = "act"


class TokenizerKind(StrEnum):
    BPE = "bpe"
    UNIGRAM = "unigram"


class SourceConfig(Strict):
    name: str = Field(pattern=SOURCE_NAME, description="Source name (letters, digits, _ . -; at most 100)")
    files: list[str] = Field(
        default_factory=list,
        description="Globs (relative to the config file) of .txt/.md (one document per file, or split on "
        "`delimiter`), .jsonl (one document per line, `text_field`), .parquet (column `text_field`)",
    )
    hf_dataset: str | None = Field(None, description="Path of a Hugging Face `datasets` dataset saved to disk")
    hf_split: str = Field("train", description="Split of `hf_dataset` to read when it is a DatasetDict")
    text_field: str = Field("text", description="Field holding the text in .jsonl/.parquet/datasets")
    delimiter: str | None = Field(None, min_length=1,
                                  description="Split .txt/.md files into documents on this string")
    language: str | None = Field(None, description="Optional language tag (e.g. en)")
    domain: str | None = Field(None, description="Optional domain tag (e.g. code, law)")
    unseen: bool = Field(False, description="Evaluate only: never trained on")
    vocab_size: int | None = Field(None, ge=300,
                                   description="SPEC-OPT vocabulary of this source (default: tokenizer.per_source)")

    @field_validator("files", mode="before")
    @classmethod
    def _one_file_is_a_list_of_one(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _has_input(self) -> SourceConfig:
        if not self.files and not self.hf_dataset:
            raise ValueError(f"source '{self.name}' needs `files` or `hf_dataset`")
        return self


class GlobalTokenizerConfig(Strict):
    kind: TokenizerKind = Field(TokenizerKind.BPE, description="bpe or unigram")
    vocab_size: int = Field(8192, ge=300, le=1 << 20, description="Global vocabulary size")
    temperature: float = Field(0.3, ge=0, le=1, description="Mixture share of source k ∝ chars_k^temperature")
    sample_chars: int = Field(20_000_000, ge=1000, description="Characters of the balanced mixture to train on")
    path: str | None = Field(None, description="Use this tokenizer.json (byte-level, id 0 = end of document) "
                             "instead of training one: e.g. the one every site of a federation shares")
    seed: int | None = Field(None, ge=0, description="Seed of the text sample it trains on (default: run.seed); "
                             "fix it to train several seeds on the same prepared data")


class PerSourceTokenizerConfig(Strict):
    kind: TokenizerKind = Field(TokenizerKind.BPE, description="bpe or unigram")
    vocab_size: int = Field(4096, ge=300, le=1 << 20, description="Default vocabulary size of each source")
    sample_chars: int = Field(10_000_000, ge=1000, description="Max characters of a source to train on")


class TokenizerConfig(Strict):
    global_: GlobalTokenizerConfig = Field(default_factory=GlobalTokenizerConfig, alias="global")
    per_source: PerSourceTokenizerConfig = Field(default_factory=PerSourceTokenizerConfig)
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class DataConfig(Strict):
    dir: str = Field(".dept_cache/data", description="Folder of prepared data (relative to the config file)")
    val_fraction: float = Field(0.05, gt=0, lt=1, description="Share of documents held out, by document hash")
    min_doc_chars: int = Field(1, ge=1, description="Drop documents shorter than this")
    sources: list[SourceConfig] = Field(description="The data sources")
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    workers: int = Field(0, ge=0, description="Processes for reading/encoding (0 = all cores)")
    shard_tokens: int = Field(1 << 26, ge=1, le=1 << 40,
                              description="Tokens per shard file (global vocabulary, cut at a document boundary): "
                              "the unit a stopped `dept prepare` resumes from")
    chunk_chars: int = Field(2_000_000, ge=1, le=1 << 40,
                             description="Characters of text encoded per call (bounds prepare's memory; the "
                             "prepared data does not depend on it)")

    @model_serializer(mode="wrap")
    def _layout_only_when_set(self, handler) -> dict[str, Any]:
        """shard_tokens and chunk_chars shape files, not tokens: left out at their defaults, so the configs (and
        training fingerprints) of runs made before they existed stay as they were."""
        d = handler(self)
        for name in ("shard_tokens", "chunk_chars"):
            if getattr(self, name) == DataConfig.model_fields[name].default:
                d.pop(name, None)
        return d

    @model_validator(mode="after")
    def _unique(self) -> DataConfig:
        names = [s.name for s in self.sources]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate source names: {sorted(dup)}")
        if not any(not s.unseen for s in self.sources):
            raise ValueError("at least one source must be trained on (unseen: false)")
        return self


class ModelConfig(Strict):
    d_model: int = Field(256, ge=8, description="Width")
    n_layers: int = Field(4, ge=1, description="Transformer blocks")
    n_heads: int = Field(4, ge=1, description="Attention heads")
    d_mlp: int = Field(0, ge=0, description="SwiGLU hidden size (0 = 8/3·d_model rounded to 64)")
    max_seq_len: int = Field(1024, ge=8, description="Longest sequence (RoPE table / learned positions)")
    positions: str = Field("rope", pattern="^(rope|learned)$", description="rope or learned")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base frequency")
    norm_eps: float = Field(1e-5, gt=0, description="RMSNorm epsilon")
    init_std: float = Field(0.02, gt=0, description="Std of weight initialisation")

    @model_validator(mode="after")
    def _heads(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.positions == "rope" and (self.d_model // self.n_heads) % 2:
            raise ValueError("RoPE needs an even head size")
        return self

    @property
    def mlp_hidden(self) -> int:
        if self.d_mlp:
            return self.d_mlp
        return max(64, int(round(8 * self.d_model / 3 / 64)) * 64)


class InnerOptConfig(Strict):
    lr: float = Field(6e-4, gt=0, description="Peak learning rate (AdamW)")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    grad_clip: float = Field(1.0, ge=0, description="Max grad norm (0 = off)")
    warmup_steps: int = Field(100, ge=0, description="Linear warm-up steps (global sequential steps)")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine decays to this fraction of the peak")
    keep_state: bool = Field(True, description="Keep a source's AdamW state between its rounds")


class OuterOptConfig(Strict):
    kind: str = Field("fedavg", pattern="^(fedavg|nesterov)$", description="fedavg (paper) or nesterov (DiLoCo)")
    lr: float = Field(0.7, gt=0, description="Nesterov outer learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="Nesterov momentum")


class TrainConfig(Strict):
    variant: Variant = Field(Variant.SPEC_OPT, description="glob, trim, spec, spec_opt, std or act")
    rounds: int = Field(10, ge=1, description="Rounds T (STD/ACT: blocks of local_steps steps)")
    local_steps: int = Field(500, ge=1, description="Local steps N per round")
    sources_per_round: int = Field(0, ge=0, description="Sources sampled each round (0 = all)")
    batch_size: int = Field(8, ge=1, description="Sequences per step per source")
    seq_len: int = Field(256, ge=8, description="Tokens per sequence")
    aggregation: str = Field("tokens", pattern="^(tokens|uniform)$", description="Weights of the body average")
    inner: InnerOptConfig = Field(default_factory=InnerOptConfig)
    outer: OuterOptConfig = Field(default_factory=OuterOptConfig)
    std_temperature: float = Field(0.3, ge=0, le=1, description="STD/ACT: p_k ∝ tokens_k^τ")
    std_batch_size: int = Field(0, ge=0, description="STD/ACT batch (0 = batch_size × sources_per_round)")
    act_reset_every: int = Field(0, ge=0,
                                 description="ACT: re-initialise embeddings every this many steps (0 = local_steps)")
    engine: str = Field("auto", pattern="^(auto|local|torchrun|flower)$",
                        description="auto (torchrun when launched by torchrun or a process group exists, else "
                        "local), local (one process), torchrun (torch.distributed), flower (Flower simulation)")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps|xpu(:\d+)?)$",
                        description="auto, cpu, cuda, cuda:N (torchrun: cuda = the rank's LOCAL_RANK GPU)")
    precision: str = Field("fp32", pattern="^(fp32|bf16)$", description="bf16 = autocast on CUDA/CPU")
    speed: str = Field("auto", pattern="^(auto|eager|compile-body|chunked-head|compile-body-chunked|compile)$",
                       description="How a step runs (same method, float rounding aside): eager, compile-body "
                       "(torch.compile of the body, fused AdamW), chunked-head, compile-body-chunked, compile; auto "
                       "= the measured best for the hardware (dept.algorithm.speed), eager for short runs")
    compression: str = Field("none", pattern="^(none|bf16|int8)$",
                             description="Uploads of GLOB/TRIM/SPEC/SPEC-OPT: none (the trained tensors, fp32), or "
                             "the pseudo-gradient θ_start − θ_k (and the table's) in bf16 or int8, with error "
                             "feedback (each source keeps what rounding withheld and adds it to its next upload)")
    compression_scale: str = Field("tensor", pattern="^(tensor|row)$",
                                   description="int8: one fp32 scale per tensor, or per row (+4 bytes a row)")
    min_sources: int = Field(0, ge=0, description="Aggregate a round once this many sampled sources answered "
                             "(0 = all); with fewer the round is tried again (engines that can lose workers)")
    round_retries: int = Field(2, ge=0, description="Tries again of a round with too few answers before the run "
                               "stops cleanly (resume it with --resume)")
    checkpoint_every: int = Field(1, ge=1, description="Checkpoint every this many rounds")
    keep_checkpoints: int = Field(2, ge=1, description="Newest checkpoints kept")
    threads: int = Field(0, ge=0, description="torch CPU threads (0 = all cores; at most the machine's)")
    ranks_per_source: int = Field(1, ge=1, description="torchrun: ranks that train one source together, data "
                                  "parallel (each takes an equal share of every batch; gradients all-reduced each "
                                  "step). The world splits into world/ranks_per_source groups; source k belongs to "
                                  "group k mod groups. STD/ACT train their one model on every rank")
    data_parallel: str = Field("ddp", pattern="^(ddp|fsdp)$", description="How the ranks that train one "
                               "participant share it: ddp (each holds the whole model, gradients all-reduced) or "
                               "fsdp (FSDP2: parameters, gradients and AdamW state sharded across them, gathered a "
                               "block at a time; for a body that does not fit one device)")
    micro_batch_size: int = Field(0, ge=0, description="Sequences per forward/backward pass; a rank's share of "
                                  "the batch is accumulated over as many passes as it takes (0 = one pass)")
    activation_checkpointing: bool = Field(False, description="Keep only each block's input in the forward pass "
                                           "and recompute the block in the backward pass (less activation "
                                           "memory, about a third more compute; the same numbers)")
    on_nonfinite: str = Field("skip", pattern="^(skip|stop)$", description="A source whose loss or update is NaN "
                              "or infinite: skip (leave its update out of the round, keep its state as it was, "
                              "log a `nonfinite` event) or stop (before the round is aggregated; resume later)")


class EvalConfig(Strict):
    every: int = Field(0, ge=0, description="Evaluate every E rounds (0 = only at the end)")
    max_bytes: int = Field(262_144, ge=1, description="Validation text per source: the leading whole documents "
                           "covering this many UTF-8 bytes (the same text for every tokenizer)")
    max_documents: int = Field(0, ge=0, description="Also stop after this many validation documents (0 = no cap)")
    batch_size: int = Field(16, ge=1, description="Validation windows per forward pass")
    escape_probability: float = Field(1e-4, gt=0, lt=1, description="TRIM/SPEC tables hold only V_k: a "
                                      "validation token outside V_k costs -ln(p/|V minus V_k|) nats, the others "
                                      "-ln(1-p) more")
    unseen_adapt_steps: int = Field(0, ge=0, description="Unseen sources: embedding-only steps on the source's "
                                    "train split before evaluating (frozen body; every variant alike)")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_tokens" in data:
            raise ValueError("max_tokens was replaced by max_bytes (and max_documents): the cap counts text, "
                             "so every tokenizer scores the same documents")
        return data


class FlowerConfig(Strict):
    client_cpus: float = Field(1.0, gt=0, description="Simulation: CPU share of each ClientApp (also its torch "
                               "threads)")
    client_gpus: float = Field(0.0, ge=0, description="Simulation: GPU share of each ClientApp")
    round_timeout_s: float = Field(3600.0, gt=0, description="Wait this long for a round's replies; a source that "
                                   "has not answered by then is left out of the round")
    connect_timeout_s: float = Field(300.0, gt=0, description="Wait this long for SuperNodes to connect and "
                                     "announce the sources they serve")


class RunConfig(Strict):
    dir: str = Field("runs/run", description="Run folder (relative to the config file)")
    seed: int = Field(0, ge=0, lt=2**63, description="Seed of every random choice (init, data order, source "
                      "sampling)")


class Config(Strict):
    run: RunConfig = Field(default_factory=RunConfig)
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    flower: FlowerConfig = Field(default_factory=FlowerConfig)
    base_dir: Annotated[str, Field(exclude=True)] = "."

    @model_validator(mode="after")
    def _fits(self) -> Config:
        if self.train.seq_len > self.model.max_seq_len:
            raise ValueError(f"train.seq_len {self.train.seq_len} exceeds model.max_seq_len {self.model.max_seq_len}")
        if self.train.data_parallel == "fsdp" and self.train.variant == Variant.ACT:
            raise ValueError("train.data_parallel=fsdp: ACT re-initialises its sharded embedding, which is not "
                             "supported; use ddp")
        trained = len(self.trained_sources)
        if self.train.sources_per_round > trained:
            raise ValueError(f"train.sources_per_round {self.train.sources_per_round} exceeds the {trained} "
                             "trained sources")
        return self

    @property
    def trained_sources(self) -> list[SourceConfig]:
        return [s for s in self.data.sources if not s.unseen]

    @property
    def sources_per_round(self) -> int:
        return self.train.sources_per_round or len(self.trained_sources)

    @property
    def std_batch_size(self) -> int:
        """STD/ACT's batch: `train.std_batch_size`, or as many sequences per step as a DEPT round's sources."""
        return self.train.std_batch_size or self.train.batch_size * self.sources_per_round

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return (p if p.is_absolute() else Path(self.base_dir) / p).resolve()

    @property
    def data_dir(self) -> Path:
        return self.resolve(self.data.dir)

    @property
    def run_dir(self) -> Path:
        return self.resolve(self.run.dir)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def to_resolved_dict(self) -> dict[str, Any]:
        """The settings with every path absolute: the same config whatever folder it is read from."""
        d = self.to_dict()
        d["run"]["dir"] = str(self.run_dir)
        d["data"]["dir"] = str(self.data_dir)
        for src in d["data"]["sources"]:
            src["files"] = [str(self.resolve(f)) for f in src["files"]]
            if src.get("hf_dataset"):
                src["hf_dataset"] = str(self.resolve(src["hf_dataset"]))
        return d

    def training_fingerprint(self) -> str:
        """Hash of everything that shapes the training trajectory (a resumed run must match it)."""
        return hashlib.sha256(json.dumps(self.training_settings(), sort_keys=True).encode()).hexdigest()[:16]

    def settings_differing_from(self, other: Config) -> list[str]:
        """The dotted keys of the training settings where `other` differs (what makes fingerprints differ)."""
        a, b = flatten_settings(self.training_settings()), flatten_settings(other.training_settings())
        return sorted(k for k in a.keys() | b.keys() if a.get(k, "<unset>") != b.get(k, "<unset>"))

    def training_settings(self) -> dict[str, Any]:
        """Everything that shapes the training trajectory; the rest (paths, devices, threads, speed, engine,
        checkpoint cadence, evaluation) may change on resume."""
        d = self.to_resolved_dict()
        d["run"] = {"seed": d["run"]["seed"]}
        d["data"].pop("dir")
        d["train"] = {k: v for k, v in d["train"].items() if k not in ("checkpoint_every", "keep_checkpoints",
                                                                       "device", "threads", "engine", "speed",
                                                                       "min_sources", "round_retries",
                                                                       "on_nonfinite", "ranks_per_source",
                                                                       "data_parallel",
                                                                       "micro_batch_size",
                                                                       "activation_checkpointing")}
        if d["data"]["tokenizer"]["global"]["seed"] is None:  # as before the option existed
            d["data"]["tokenizer"]["global"].pop("seed")
        if d["train"]["compression"] != "int8":  # only int8 has scales
            d["train"].pop("compression_scale")
        if d["train"]["compression"] == "none":  # as before the option existed: older runs still resume
            d["train"].pop("compression")
        d.pop("eval", None)
        d.pop("flower", None)
        return d


def setting_fields(entries: tuple[str, ...] = ("[]",), model: Any = None,
                   prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, pydantic field) of every setting. A list of sections (`data.sources`) is given as itself, then
    its fields once per entry of `entries`: `data.sources[].name` by default, `data.sources.0.name` with
    `entries=(".0",)`."""
    for name, field in (model or Config).model_fields.items():
        if name == "base_dir":
            continue
        key = f"{prefix}{field.alias or name}"
        ann = field.annotation
        if hasattr(ann, "model_fields"):
            yield from setting_fields(entries, ann, key + ".")
        elif getattr(ann, "__args__", None) and hasattr(ann.__args__[0], "model_fields"):
            yield key, field
            for entry in entries:
                yield from setting_fields(entries, ann.__args__[0], f"{key}{entry}.")
        else:
            yield key, field


def flatten_settings(tree: Any, expand_lists: bool = True, prefix: str = "") -> dict[str, Any]:
    """{"a.b": value} from nested settings; `expand_lists`: lists of sections by index too ("data.sources.0.name")."""
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items()
                for k, v in flatten_settings(value, expand_lists, f"{prefix}{key}.").items()}
    if expand_lists and isinstance(tree, list) and any(isinstance(v, dict) for v in tree):
        return {k: v for i, value in enumerate(tree)
                for k, v in flatten_settings(value, expand_lists, f"{prefix}{i}.").items()}
    return {prefix[:-1]: tree}


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key.path=value")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        keys, value = parse_override(text)
        node: Any = tree
        for i, k in enumerate(keys[:-1]):
            if isinstance(node, list) and k.isdigit() and int(k) < len(node):
                node = node[int(k)]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{'.'.join(keys[:i])}' is not a section")
            node = node.setdefault(k, {})
        last = keys[-1]
        if isinstance(node, list) and last.isdigit() and int(last) < len(node):
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"override '{text}': '{'.'.join(keys[:-1])}' is not a section")
    return tree


def _format_validation_error(err: ValidationError, where: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "missing required key"
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{where}: {loc}: {msg}{more}"


def config_from_dict(tree: dict[str, Any], where: str, base_dir: str | Path = ".") -> Config:
    if not isinstance(tree, dict):
        raise ConfigError(f"{where}: the config must be a mapping of sections")
    if "base_dir" in tree:  # an internal field: paths are relative to the config file's folder
        raise ConfigError(f"{where}: base_dir: unknown key (paths in a config are relative to its folder)")
    try:
        return Config.model_validate({**tree, "base_dir": str(base_dir)})
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, where)) from None


_KINDS = {list: "a list", int: "a number", float: "a number", str: "a string", bool: "a boolean"}


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections (run:, data:, ...), "
                          f"not {_KINDS.get(type(tree), 'a ' + type(tree).__name__)}")
    tree = apply_overrides(tree, overrides or [])
    return config_from_dict(tree, str(path), base_dir=path.parent.resolve())


def resolved_yaml(cfg: Config) -> str:
    """The resolved config with absolute paths, as YAML: it loads the same from anywhere."""
    return yaml.safe_dump(cfg.to_resolved_dict(), sort_keys=False, allow_unicode=True)


def save_config(cfg: Config, path: Path) -> None:
    write_text_atomic(path, resolved_yaml(cfg))


def load_saved_config(path: Path) -> Config:
    """A config written by `save_config` inside a run folder (paths are absolute there)."""
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as err:
        raise ConfigError(f"{path}: damaged (not valid YAML: {str(err).splitlines()[0]})") from None
    return config_from_dict(tree, str(path), base_dir=path.parent)
