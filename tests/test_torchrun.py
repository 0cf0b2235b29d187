"""The torchrun engine: 2 gloo ranks on this machine give the local engine's result bitwise, move what the formula
says, and a rank that dies leaves a run that `--resume` finishes with the same result."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_tree
from safetensors.torch import load_file

from dept.algorithm.source_store import SourceStore
from dept.data.prepared import PreparedData
from dept.eval.comms import body_parameters_of
from dept.training import Trainer

ENV = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}


def torchrun(*args, **popen):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dept",
           *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            start_new_session=True, **popen)


def finish(proc, timeout=240):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc.returncode, out, err


def write_config(tmp_path: Path, prepared_root: Path, **train) -> Path:
    tree = tiny_tree(prepared_root)
    tree["run"]["dir"] = str(tmp_path / "dist")
    tree["train"].update(threads=1, **train)  # ranks run one thread each; the local run too: the same sums
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def local_run(config: Path, run_dir: Path):
    from dept.config import load_config

    cfg = load_config(config, [f"run.dir={run_dir}", "train.engine=local"])
    threads = torch.get_num_threads()
    try:
        Trainer(cfg, log=lambda *_: None).train()
    finally:
        torch.set_num_threads(threads)
    return cfg


def tensors(run: Path, name: str) -> dict:
    last = sorted((run / "checkpoints").glob("round_*"))[-1]
    return load_file(str(last / name))


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("variant", ["spec_opt", "trim", "glob"])
def test_two_ranks_give_the_local_result_bitwise(prepared_root, tmp_path, variant):
    config = write_config(tmp_path, prepared_root, variant=variant, rounds=3, sources_per_round=2)
    code, out, err = finish(torchrun("train", config))
    assert code == 0, err[-3000:]
    assert out.count("round 3/3") == 1  # only rank 0 logs

    local = local_run(config, tmp_path / "local")
    dist = tmp_path / "dist"
    for name in ("body.safetensors", "embedding.safetensors"):
        assert_same_tensors(tensors(dist, name), tensors(local.run_dir, name))
    a, b = SourceStore(dist / "sources"), SourceStore(local.run_dir / "sources")
    for s in local.trained_sources:  # each source's private state, written by the rank that owns it
        sa, sb = a.load(s.name, 3), b.load(s.name, 3)
        assert (sa is None) == (sb is None)
        if sa is not None:
            assert_same_tensors(sa.embedding, sb.embedding)
            assert sa.streams == sb.streams
    ra = json.loads((dist / "results.json").read_text())
    rb = json.loads((local.run_dir / "results.json").read_text())
    assert [(r["source"], r["loss"]) for r in ra["results"]] == [(r["source"], r["loss"]) for r in rb["results"]]

    # what the all-reduce carried: one fp32 buffer of the body sums, + GLOB's table / TRIM's rows and weights
    rounds = [json.loads(line) for line in (dist / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in rounds if r["event"] == "round"]
    data = PreparedData(local.data_dir)
    body, vocab, d = body_parameters_of(local.model), data.global_vocab_size, local.model.d_model
    expected = {"spec_opt": body, "glob": body + vocab * d, "trim": body + vocab * d + vocab}[variant] * 4
    assert all(r["engine"]["all_reduce_bytes"] == expected for r in rounds)
    assert all(r["engine"]["world_size"] == 2 for r in rounds)


def rank_pids(launcher_pid: int) -> dict[int, int]:
    """The worker processes started by a torchrun launcher, by their RANK."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) != launcher_pid:
                continue
            env = dict(e.split(b"=", 1) for e in (proc / "environ").read_bytes().split(b"\0") if b"=" in e)
        except OSError:
            continue
        if b"RANK" in env:
            found[int(env[b"RANK"])] = int(proc.name)
    return found


def test_a_dead_rank_stops_the_run_and_resume_finishes_it(prepared_root, tmp_path):
    config = write_config(tmp_path, prepared_root, variant="trim", rounds=4, local_steps=40, sources_per_round=2)
    proc = torchrun("train", config)
    metrics = tmp_path / "dist" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count('"round"') >= 1):
        time.sleep(0.05)
    pids = rank_pids(proc.pid)
    assert 1 in pids, pids
    os.kill(pids[1], signal.SIGKILL)  # rank 1 dies in the middle of the run
    code, _, err = finish(proc)
    assert code != 0
    assert "exitcode" in err and "-9" in err  # torchrun names the rank that died and how
    done = [json.loads(line)["round"] for line in metrics.read_text().splitlines() if '"event": "round"' in line]
    assert done and max(done) < 3

    code, _, err = finish(torchrun("train", "--resume", tmp_path / "dist"))
    assert code == 0, err[-3000:]

    local = local_run(config, tmp_path / "local")
    assert_same_tensors(tensors(tmp_path / "dist", "body.safetensors"), tensors(local.run_dir, "body.safetensors"))
    assert_same_tensors(tensors(tmp_path / "dist", "embedding.safetensors"),
                        tensors(local.run_dir, "embedding.safetensors"))
