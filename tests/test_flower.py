"""The Flower engine: simulation and a real deployment (SuperLink + one SuperNode per source, separate processes on
loopback) give the local engine's result; messages carry what the formula says plus their framing; a SuperNode
killed mid-run leaves a run that completes. Every process a test starts is stopped by its pid."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_tree
from safetensors.torch import load_file

from dept.config import load_config
from dept.data.prepared import PreparedData
from dept.engines.flower_env import OFFLINE_ENV
from dept.eval.comms import body_parameters_of
from dept.training import Trainer

pytest.importorskip("flwr")
pytestmark = pytest.mark.xdist_group("flower")  # one worker runs every federation (see scripts/test.sh)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(home: Path) -> dict:
    return {**os.environ, **OFFLINE_ENV, "FLWR_HOME": str(home), "COLUMNS": "200", "OMP_NUM_THREADS": "1"}


def dept_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "dept", *map(str, args)]


class Federation:
    """A SuperLink and one SuperNode per source, each its own process group, stopped by pid."""

    def __init__(self, root: Path, sources: list[str]):
        self.root, self.port, self.procs = root, free_port(), {}
        root.mkdir(parents=True, exist_ok=True)
        self.start("superlink", ["flower", "superlink", "--address", f"127.0.0.1:{self.port}", "--insecure"])
        time.sleep(3)
        for name in sources:
            self.start(name, ["flower", "supernode", "--superlink", f"127.0.0.1:{self.port}", "--source", name,
                              "--port", free_port(), "--insecure"])

    def start(self, name: str, args: list) -> None:
        log = open(self.root / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen(dept_cmd(*args), stdout=log, stderr=subprocess.STDOUT,
                                            env=env(self.root / "home"), start_new_session=True)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the SuperNode and the ClientApp processes it started
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def run(self, config: Path, *overrides, timeout: int = 400) -> subprocess.CompletedProcess:
        return subprocess.run(dept_cmd("flower", "run", config, *overrides, "--superlink",
                                       f"127.0.0.1:{self.port}", "--insecure"),
                              capture_output=True, text=True, env=env(self.root / "cli"), timeout=timeout)

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill(name)


def write_config(path: Path, prepared_root: Path, **train) -> Path:
    tree = tiny_tree(prepared_root)
    tree["train"].update({"rounds": 2, "sources_per_round": 2, "threads": 1, **train})  # one thread: same sums
    tree["flower"] = {"round_timeout_s": 120, "connect_timeout_s": 60}
    path.write_text(yaml.safe_dump(tree))
    return path


def last(run: Path, name: str) -> dict:
    return load_file(str(sorted((run / "checkpoints").glob("round_*"))[-1] / name))


def assert_same_run(a: Path, b: Path) -> None:
    for name in ("body.safetensors", "embedding.safetensors"):
        ta, tb = last(a, name), last(b, name)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name
    ra = json.loads((a / "results.json").read_text())["results"]
    rb = json.loads((b / "results.json").read_text())["results"]
    assert [(r["source"], r["loss"], r["bytes"]) for r in ra] == [(r["source"], r["loss"], r["bytes"]) for r in rb]


def local_run(config: Path, run_dir: Path, variant: str) -> Path:
    cfg = load_config(config, [f"run.dir={run_dir}", f"train.variant={variant}", "train.engine=local"])
    threads = torch.get_num_threads()
    try:
        Trainer(cfg, log=lambda *_: None).train()
    finally:
        torch.set_num_threads(threads)
    return cfg.run_dir


VARIANTS = ["spec_opt", "trim", "glob"]  # no embedding, some rows with their ids, the whole table


@pytest.fixture(scope="module")
def federation(prepared_root, tmp_path_factory):
    fed = Federation(tmp_path_factory.mktemp("federation"), ["en", "fr", "code", "ru"])
    yield fed
    fed.stop()


@pytest.mark.parametrize("variant", VARIANTS)
def test_simulation_gives_the_local_result(prepared_root, tmp_path, variant):
    config = write_config(tmp_path / "c.yaml", prepared_root)
    proc = subprocess.run(dept_cmd("train", config, f"run.dir={tmp_path / 'sim'}", f"train.variant={variant}",
                                   "train.engine=flower"), capture_output=True, text=True, env=env(tmp_path / "h"),
                          timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(tmp_path / "sim", local_run(config, tmp_path / "local", variant))

    # the bytes in the messages: what the formula counts, plus the framing the engine reports
    cfg = load_config(config)
    data = PreparedData(cfg.data_dir)
    body, d = body_parameters_of(cfg.model) * 4, cfg.model.d_model
    for record in (json.loads(line) for line in (tmp_path / "sim" / "metrics.jsonl").read_text().splitlines()):
        if record["event"] != "round":
            continue
        for name in record["sources"]:
            rows = data.source(name).trim_vocab().size
            down = {"spec_opt": body, "glob": body + data.global_vocab_size * d * 4,
                    "trim": body + rows * d * 4}[variant]
            up = down + (4 * rows if variant == "trim" else 0)
            framing = record["engine"]["framing_bytes"][name]
            assert record["engine"]["payload_bytes"][name] == [down, up]
            assert [record["bytes_down"][name], record["bytes_up"][name]] == [down + framing[0], up + framing[1]]
            assert 0 < framing[0] < 4096 and 0 < framing[1] < 4096


@pytest.mark.parametrize("variant", ["trim"])  # simulation checks the messages of all three variants
def test_deployment_gives_the_local_result(federation, prepared_root, tmp_path, variant):
    """Deployed: SuperLink, SuperNodes, `dept flower run` (spec_opt deployed: the killed-SuperNode test)."""
    config = write_config(tmp_path / "c.yaml", prepared_root)
    proc = federation.run(config, f"run.dir={tmp_path / 'dep'}", f"train.variant={variant}")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert_same_run(tmp_path / "dep", local_run(config, tmp_path / "local", variant))


def test_std_is_refused_in_a_federation(prepared_root, tmp_path):
    config = write_config(tmp_path / "c.yaml", prepared_root)
    proc = subprocess.run(dept_cmd("train", config, f"run.dir={tmp_path / 'std'}", "train.variant=std",
                                   "train.engine=flower"), capture_output=True, text=True, env=env(tmp_path / "h"),
                          timeout=400)
    assert proc.returncode != 0 and "error: STD/ACT" in proc.stderr


def test_a_killed_supernode_does_not_stop_the_run(prepared_root, tmp_path):
    fed = Federation(tmp_path / "fed", ["en", "fr", "code", "ru"])
    try:
        config = write_config(tmp_path / "c.yaml", prepared_root, rounds=3)
        tree = yaml.safe_load(config.read_text())
        tree["train"].update(min_sources=1)
        tree["flower"]["round_timeout_s"] = 30
        config.write_text(yaml.safe_dump(tree))
        run = tmp_path / "run"
        proc = subprocess.Popen(dept_cmd("flower", "run", config, f"run.dir={run}", "train.variant=spec_opt",
                                         "--superlink", f"127.0.0.1:{fed.port}", "--insecure"),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env(tmp_path / "cli"), start_new_session=True)
        metrics = run / "metrics.jsonl"
        deadline = time.time() + 300
        while time.time() < deadline and not (metrics.exists() and '"round"' in metrics.read_text()):
            time.sleep(0.2)
        fed.kill("fr")  # a site goes down after the first round
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
        rounds = [json.loads(line) for line in metrics.read_text().splitlines()]
        rounds = [r for r in rounds if r["event"] == "round"]
        assert len(rounds) == 3
        later = [r for r in rounds[1:] if "fr" in r["sources"]]
        assert later and all("fr" not in r["train_loss"] for r in later)  # sampled, left out, run went on
        assert all(r["train_loss"] for r in rounds)
        assert (run / "results.json").is_file()
    finally:
        fed.stop()
