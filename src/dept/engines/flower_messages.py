"""dept's typed messages as Flower records, and back: the only place that knows the record layout.

Tensors travel as `ArrayRecord`s (one per part: body, table), scalars and names as `ConfigRecord`s. Only what the
variant sends is in a message: SPEC/SPEC-OPT messages hold the body alone; their tables, tokenizers and optimizer
state stay in the site's files. The run's resolved config travels with every message (a few KB), because a
ClientApp keeps nothing between messages (in deployment each message may start a fresh process).

A compressed part (`QuantizedTensors`, `train.compression`) travels as its int8 or bf16 values (bf16, which numpy
lacks, as the same 2 bytes viewed as int16), its fp32 scales in a record of their own, and its scheme.
"""

from __future__ import annotations

import numpy as np
import torch

from dept.engines.flower_env import quiet_flower

quiet_flower()

from flwr.app import ArrayRecord, ConfigRecord, RecordDict  # noqa: E402

from dept.algorithm.types import (  # noqa: E402
    Assignment,
    Download,
    EmbeddingPayload,
    Encoded,
    EvalAssignment,
    Mixture,
    Participant,
    QuantizedTensors,
    RoundPlan,
    Source,
    SourceEval,
    SourceProfile,
    TableRows,
    TensorDict,
    WholeTable,
    WorkerUpdate,
)
from dept.config import is_source_name  # noqa: E402
from dept.errors import EngineError  # noqa: E402

# Record names: every message is a RecordDict of some of these.
RUN, PLAN, WHO, BODY, TABLE, IDS, RESULT, STATS = "run", "plan", "who", "body", "table", "ids", "result", "stats"


def _arrays(tensors: TensorDict) -> ArrayRecord:
    return ArrayRecord.from_torch_state_dict({k: v.detach().contiguous() for k, v in tensors.items()})


def _tensors(record: ArrayRecord) -> TensorDict:
    return dict(record.to_torch_state_dict())


def _put(content: RecordDict, name: str, tensors: Encoded) -> None:
    """Tensors under `name`: as they are, or a compressed part's values + NAME.scales + NAME.codec (its scheme)."""
    if not isinstance(tensors, QuantizedTensors):
        content[name] = _arrays(tensors)
        return
    content[name] = _arrays({k: v.view(torch.int16) if v.dtype == torch.bfloat16 else v
                             for k, v in tensors.values.items()})
    if tensors.scales:
        content[name + ".scales"] = _arrays(tensors.scales)
    content[name + ".codec"] = ConfigRecord({"scheme": tensors.scheme})


def _get(content: RecordDict, name: str) -> Encoded:
    values = _tensors(content.array_records[name])
    if name + ".codec" not in content.config_records:
        return values
    scheme = str(content.config_records[name + ".codec"]["scheme"])
    if scheme == "bf16":
        values = {k: v.view(torch.bfloat16) for k, v in values.items()}
    scales = _tensors(content.array_records[name + ".scales"]) if name + ".scales" in content.array_records else {}
    return QuantizedTensors(scheme, values, scales)


def array_bytes(content: RecordDict) -> int:
    """Bytes of the serialised arrays in a message (npy data + headers + keys, as Flower counts them)."""
    return sum(record.count_bytes() for record in content.array_records.values())


def run_record(config_yaml: str) -> ConfigRecord:
    return ConfigRecord({"config": config_yaml})


def config_text(content: RecordDict) -> str:
    return str(content.config_records[RUN]["config"])


# ---- participants ----------------------------------------------------------------------------------------------

def _who(participant: Participant) -> ConfigRecord:
    if isinstance(participant, Mixture):
        return ConfigRecord({"kind": "mixture", "sources": list(participant.sources)})
    return ConfigRecord({"kind": "source", "name": participant.name, "index": participant.index})


def _participant(record: ConfigRecord) -> Participant:
    """Who a message is for or from; a name that is not a source name is refused (it would name folders)."""
    names = list(record["sources"]) if record["kind"] == "mixture" else [record["name"]]
    bad = [str(n) for n in names if not is_source_name(n)]
    if bad:
        raise EngineError(f"a message names source '{bad[0][:100]}', which is not a source name: refused")
    if record["kind"] == "mixture":
        return Mixture(tuple(names))
    return Source(str(record["name"]), int(record["index"]))


# ---- embedding payloads ----------------------------------------------------------------------------------------

def _put_table(content: RecordDict, payload: EmbeddingPayload) -> None:
    if payload is None:
        return
    _put(content, TABLE, payload.tensors)
    content[WHO + ".table"] = ConfigRecord({"kind": "whole" if isinstance(payload, WholeTable) else "rows"})
    if isinstance(payload, TableRows) and payload.ids is not None:
        content[IDS] = _arrays({"ids": payload.ids})


def _get_table(content: RecordDict) -> EmbeddingPayload:
    if TABLE not in content.array_records:
        return None
    tensors = _get(content, TABLE)
    if content.config_records[WHO + ".table"]["kind"] == "whole":
        return WholeTable(tensors)
    ids = _tensors(content.array_records[IDS])["ids"] if IDS in content.array_records else None
    return TableRows(tensors, ids)


# ---- training --------------------------------------------------------------------------------------------------

def encode_assignment(a: Assignment, config_yaml: str) -> RecordDict:
    p = a.plan
    content = RecordDict({
        RUN: run_record(config_yaml), WHO: _who(a.participant), BODY: _arrays(a.download.body),
        PLAN: ConfigRecord({"round": p.round, "first_step": p.first_step, "local_steps": p.local_steps,
                            "total_steps": p.total_steps, "keep_from_round": p.keep_from_round,
                            "state_round": -1 if a.state_round is None else a.state_round}),
    })
    _put_table(content, a.download.embedding)
    return content


def decode_assignment(content: RecordDict) -> Assignment:
    p = content.config_records[PLAN]
    participant = _participant(content.config_records[WHO])
    plan = RoundPlan(int(p["round"]), (participant,), int(p["first_step"]), int(p["local_steps"]),
                     int(p["total_steps"]), int(p["keep_from_round"]))
    state_round = int(p["state_round"])
    download = Download(_tensors(content.array_records[BODY]), _get_table(content))
    return Assignment(participant, plan, download, None if state_round < 0 else state_round)


def encode_update(u: WorkerUpdate) -> RecordDict:
    content = RecordDict({
        WHO: _who(u.participant),
        RESULT: ConfigRecord({"round": u.round, "tokens": u.tokens, "train_loss": u.train_loss,
                              "last_loss": u.last_loss, "elapsed_s": u.elapsed_s, "nonfinite": u.nonfinite}),
        STATS: ConfigRecord({k: float(v) for k, v in u.stats.items()}),
    })
    _put(content, BODY, u.body)
    _put_table(content, u.embedding)
    return content


def decode_update(content: RecordDict) -> WorkerUpdate:
    r = content.config_records[RESULT]
    stats = content.config_records[STATS] if STATS in content.config_records else {}
    return WorkerUpdate(_participant(content.config_records[WHO]), int(r["round"]),
                        _get(content, BODY), int(r["tokens"]), _get_table(content),
                        float(r["train_loss"]), float(r["last_loss"]), float(r["elapsed_s"]),
                        stats={k: float(v) for k, v in stats.items()}, nonfinite=str(r.get("nonfinite", "")))


# ---- evaluation ------------------------------------------------------------------------------------------------

def encode_eval_assignment(a: EvalAssignment, config_yaml: str) -> RecordDict:
    content = RecordDict({RUN: run_record(config_yaml), WHO: _who(a.source), BODY: _arrays(a.body),
                          PLAN: ConfigRecord({"state_round": -1 if a.state_round is None else a.state_round})})
    _put_table(content, a.embedding)
    return content


def decode_eval_assignment(content: RecordDict) -> EvalAssignment:
    source = _participant(content.config_records[WHO])
    state_round = int(content.config_records[PLAN]["state_round"])
    return EvalAssignment(source, _tensors(content.array_records[BODY]), _get_table(content),
                          None if state_round < 0 else state_round)


_EVAL_FIELDS = ("source", "unseen", "loss", "perplexity", "bpb", "tokens", "bytes", "documents", "vocab_size",
                "oov_tokens", "note")


def encode_eval_result(r: SourceEval) -> RecordDict:
    return RecordDict({RESULT: ConfigRecord({f: getattr(r, f) for f in _EVAL_FIELDS})})


def decode_eval_result(content: RecordDict) -> SourceEval:
    r = content.config_records[RESULT]
    return SourceEval(**{f: r[f] for f in _EVAL_FIELDS})


# ---- profiles --------------------------------------------------------------------------------------------------

def encode_profiles(profiles: list[SourceProfile]) -> RecordDict:
    content = RecordDict()
    for i, p in enumerate(profiles):
        content[f"{WHO}.{i}"] = _who(p.participant)
        content[f"profile.{i}"] = ConfigRecord({"vocab_size": p.vocab_size, "global_vocab": p.global_vocab,
                                                "unseen": p.unseen})
        if p.held_ids is not None:
            content[f"{IDS}.{i}"] = _arrays({"ids": torch.from_numpy(np.ascontiguousarray(p.held_ids))})
    return content


def decode_profiles(content: RecordDict) -> list[SourceProfile]:
    out = []
    i = 0
    while f"{WHO}.{i}" in content.config_records:
        c = content.config_records[f"profile.{i}"]
        ids = content.array_records.get(f"{IDS}.{i}")
        held = _tensors(ids)["ids"].numpy() if ids is not None else None
        out.append(SourceProfile(_participant(content.config_records[f"{WHO}.{i}"]), int(c["vocab_size"]),
                                 int(c["global_vocab"]), held, bool(c["unseen"])))
        i += 1
    return out
