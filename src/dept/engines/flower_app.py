"""DEPT as a Flower app: a ClientApp that runs dept's worker and per-source evaluation at a site, and a ServerApp
that runs dept's round loop over Flower's Grid (the same loop as every other engine).

The ServerApp's "strategy" is dept's coordinator: it configures each round (what each sampled source receives) and
aggregates the replies (FedAvg or Nesterov; the GLOB/TRIM/SPEC rules). `FlowerGridEngine` only turns assignments
into Flower messages, sends them to the SuperNode that serves each source, and turns the replies back.

A site (SuperNode) is told by its node config which source(s) it serves and where its files are:

    source      comma-separated source names (simulation: the source at position `partition-id` of the config)
    data-dir    its prepared data folder (default: the config's data.dir): it needs only its sources' folders
    state-dir   where its sources' private state lives: their tables, AdamW state and stream positions (default:
                RUN/sources); on the node's disk, never in Flower's `context.state`, which dies with the node

The server never reads a site's text: evaluation runs at the site and only typed results come back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from dept.engines.flower_env import quiet_flower

quiet_flower()

from flwr.app import Context, Message, MessageType, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from dept.algorithm.participants import LocalData  # noqa: E402
from dept.algorithm.runtime import resolve_device, usable_cores  # noqa: E402
from dept.algorithm.source_store import SourceStore  # noqa: E402
from dept.algorithm.types import (  # noqa: E402
    Assignment,
    EvalAssignment,
    Mixture,
    Participant,
    SourceEval,
    SourceProfile,
    Transfer,
    WorkerUpdate,
)
from dept.algorithm.variants import spec_of  # noqa: E402
from dept.algorithm.worker import Worker  # noqa: E402
from dept.config import Config, config_from_dict, load_config, resolved_yaml  # noqa: E402
from dept.data.prepared import PreparedData  # noqa: E402
from dept.engines import flower_messages as fm  # noqa: E402
from dept.errors import EngineError  # noqa: E402
from dept.eval.validation import SourceEvaluator  # noqa: E402

# ---- the site ---------------------------------------------------------------------------------------------------



def refuse_pooled(participants: list[Participant]) -> None:
    """A federation never pools data: a participant that mixes every source's batches has no site."""
    if any(isinstance(p, Mixture) for p in participants):
        raise EngineError("STD/ACT train one model on every source's data, which a federation never pools: "
                          "run the baselines with train.engine=local or torchrun")

class Site:
    """What one SuperNode serves, built for each message from the run's config and the node's own config."""

    def __init__(self, config_yaml: str, node_config: dict):
        cfg = config_from_dict(yaml.safe_load(config_yaml), "the run's config", base_dir="/")
        if node_config.get("data-dir"):
            cfg.data.dir = str(Path(str(node_config["data-dir"])).expanduser().resolve())
        if "source" in node_config:
            self.names = [n.strip() for n in str(node_config["source"]).split(",") if n.strip()]
        else:
            self.names = [cfg.data.sources[int(node_config["partition-id"])].name]
        state_dir = node_config.get("state-dir") or cfg.run_dir / "sources"
        torch.set_num_threads(min(usable_cores(), max(1, int(cfg.train.threads or cfg.flower.client_cpus))))
        spec = spec_of(cfg.train.variant)
        device = resolve_device(cfg.train.device)
        self.data = LocalData(cfg, spec, PreparedData(cfg.data_dir))
        store = SourceStore(Path(state_dir))
        self.worker = Worker(cfg, spec, self.data, store, device)
        self.evaluator = SourceEvaluator(cfg, spec, self.data, store, device)

    def profiles(self) -> list[SourceProfile]:
        return [self.data.profile(self.data.source(name)) for name in self.names]


client_app = ClientApp()


def _site(msg: Message, context: Context) -> Site:
    return Site(fm.config_text(msg.content), dict(context.node_config))


@client_app.query()
def announce(msg: Message, context: Context) -> Message:
    """Which sources this site serves, and the shape of their tables."""
    return Message(fm.encode_profiles(_site(msg, context).profiles()), reply_to=msg)


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    update = _site(msg, context).worker.train(fm.decode_assignment(msg.content))
    return Message(fm.encode_update(update), reply_to=msg)


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    result = _site(msg, context).evaluator.evaluate(fm.decode_eval_assignment(msg.content))
    return Message(fm.encode_eval_result(result), reply_to=msg)


# ---- the server's engine ----------------------------------------------------------------------------------------


class FlowerGridEngine:
    """Moves dept's messages over a Flower Grid; each source's messages go to the SuperNode that serves it."""

    def __init__(self, grid: Grid, cfg: Config, log: Callable[[str], None] = print):
        self.grid, self.cfg, self.log = grid, cfg, log
        self.config_yaml = resolved_yaml(cfg)
        self.node_of: dict[str, int] = {}
        self._traffic: dict = {}

    def _send(self, contents: list[tuple[int, RecordDict]], message_type: str, timeout_s: float) -> list[Message]:
        messages = [Message(content, dst_node_id=node, message_type=message_type) for node, content in contents]
        replies = []
        for reply in self.grid.send_and_receive(messages, timeout=timeout_s):
            if reply.has_error():
                self.log(f"a site failed: {reply.error.reason}")
            else:
                replies.append(reply)
        return replies

    def profiles(self, participants: list[Participant]) -> list[SourceProfile]:
        refuse_pooled(participants)
        wanted = {p.key for p in participants}
        found: dict[str, SourceProfile] = {}
        asked: set[int] = set()
        deadline = time.monotonic() + self.cfg.flower.connect_timeout_s
        while not wanted <= set(found):
            new = [n for n in self.grid.get_node_ids() if n not in asked]
            if new:
                query = fm.RecordDict({fm.RUN: fm.run_record(self.config_yaml)})
                for reply in self._send([(n, query) for n in new], MessageType.QUERY, self.cfg.flower.round_timeout_s):
                    for profile in fm.decode_profiles(reply.content):
                        found[profile.participant.key] = profile
                        self.node_of[profile.participant.key] = reply.metadata.src_node_id
                asked.update(new)
            elif time.monotonic() > deadline:
                missing = ", ".join(sorted(wanted - set(found)))
                waited = self.cfg.flower.connect_timeout_s
                raise EngineError(f"no SuperNode serves source(s) {missing} after {waited:.0f} s: start one per "
                                  "site with its node config source=NAME data-dir=DIR")
            else:
                time.sleep(1.0)
        return [found[p.key] for p in participants]

    def run_round(self, assignments: list[Assignment]) -> list[WorkerUpdate]:
        sent = {a.participant.key: fm.encode_assignment(a, self.config_yaml) for a in assignments}
        replies = self._send([(self.node_of[k], c) for k, c in sent.items()], MessageType.TRAIN,
                             self.cfg.flower.round_timeout_s)
        got: dict[str, WorkerUpdate] = {}
        for reply in replies:
            update = fm.decode_update(reply.content)
            update.moved = Transfer(fm.array_bytes(sent[update.key]), fm.array_bytes(reply.content))
            got[update.key] = update
        payload = {a.participant.key: [a.download.nbytes, got[a.participant.key].nbytes]
                   for a in assignments if a.participant.key in got}
        self._traffic = {"engine": "flower", "payload_bytes": payload,
                         "framing_bytes": {k: [got[k].moved.down - p[0], got[k].moved.up - p[1]]
                                           for k, p in payload.items()}}
        return [got[a.participant.key] for a in assignments if a.participant.key in got]

    def traffic(self) -> dict:
        """Message bytes are in the round's bytes_down/up; here the tensors' own bytes and the difference, the
        message framing (npy headers and array names)."""
        return self._traffic

    def evaluate(self, assignments: list[EvalAssignment]) -> list[SourceEval]:
        sent = [(self.node_of[a.source.key], fm.encode_eval_assignment(a, self.config_yaml)) for a in assignments]
        results = {r.source: r for r in map(fm.decode_eval_result,
                                             (m.content for m in self._send(sent, MessageType.EVALUATE,
                                                                            self.cfg.flower.round_timeout_s)))}
        missing = [a.source.name for a in assignments if a.source.name not in results]
        if missing:
            self.log(f"no evaluation from {', '.join(missing)} (their sites did not answer)")
        return [results[a.source.name] for a in assignments if a.source.name in results]


# ---- the server -------------------------------------------------------------------------------------------------


def run_federation(grid: Grid, cfg: Config, resume: bool, log: Callable[[str], None] = print) -> None:
    from dept.training import Trainer

    Trainer(cfg, engine=FlowerGridEngine(grid, cfg, log), log=log).train(resume=resume)


def server_app_for(cfg: Config, resume: bool, log: Callable[[str], None], failures: list) -> ServerApp:
    """A ServerApp running this config (simulation, in this process); an error is kept in `failures`."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            run_federation(grid, cfg, resume, log)
        except BaseException as err:  # re-raised by the caller once the simulation has shut down
            failures.append(err)

    return app


# Deployment: `flwr run` starts this ServerApp with the run config of the shipped Flower App
# (`dept flower run` fills it in): config = path of the YAML, overrides = "key=value;key=value", resume = bool.
server_app = ServerApp()


@server_app.main()
def deployed_main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    overrides = [o for o in str(rc.get("overrides", "")).split(";") if o.strip()]
    cfg = load_config(str(rc["config"]), overrides)
    run_federation(grid, cfg, resume=bool(rc.get("resume", False)))
