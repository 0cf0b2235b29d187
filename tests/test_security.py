"""Nothing dept loads can run code, and no name from a config, a command line or a peer's message can make it
read or write outside the folder it belongs in; `train.threads` is bounded by the machine."""

import re
from pathlib import Path

import pytest
import torch

from dept.algorithm.source_store import SourceState, SourceStore
from dept.algorithm.types import Source, WorkerUpdate
from dept.errors import CheckpointError, ConfigError, DeptError, EngineError

SRC = Path(__file__).resolve().parents[1] / "src" / "dept"
BAD_NAMES = ["../outside", "..", ".hidden", "a/b", "/etc", "x" * 101, "", "a\\b", "naïve"]


def test_loaders_never_unpickle_or_run_code():
    """safetensors, JSON, YAML's safe loader, numpy without pickles: a guard on the source itself."""
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import pickle|from pickle|import dill|import cloudpickle)", text, re.M), path
        assert not re.search(r"torch\.load\((?![^)]*weights_only=True)", text), path
        assert "allow_pickle=True" not in text, path
        assert not re.search(r"yaml\.(load|unsafe_load|full_load)\(", text), path
        assert not re.search(r"\b(eval|exec)\(\s*(?!\))", text.replace("lm.eval()", "").replace(".eval()", "")), path
        assert "trust_remote_code=True" not in text, path


@pytest.mark.parametrize("name", BAD_NAMES)
def test_source_state_is_never_read_or_written_under_another_name(tmp_path, name):
    store = SourceStore(tmp_path / "run" / "sources")
    with pytest.raises(CheckpointError, match="is not a source name"):
        store.save(name, 0, SourceState())
    with pytest.raises(CheckpointError, match="is not a source name"):
        store.load(name, 5)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_peer_message_naming_no_source_is_refused(name):
    fm = pytest.importorskip("dept.engines.flower_messages")
    content = fm.encode_update(WorkerUpdate(Source(name, 0), 0, {"w": torch.zeros(2)}, 1))
    with pytest.raises(EngineError, match="which is not a source name: refused"):
        fm.decode_update(content)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_config_naming_no_source_is_refused(tmp_path, name):
    from conftest import make_config

    with pytest.raises(ConfigError, match="name"):
        make_config(tmp_path, {"data.sources": [{"name": name, "files": ["x.jsonl"]}]})


def test_adapt_refuses_a_source_name_that_would_leave_the_run_folder(tmp_path):
    from typer.testing import CliRunner

    from dept.cli import app

    out = CliRunner().invoke(app, ["adapt", str(tmp_path), "--source", "../../evil=x.txt"])
    assert out.exit_code != 0 and isinstance(out.exception, DeptError)
    assert "a source name is letters" in str(out.exception)


def test_threads_beyond_the_machine_are_refused(tiny):
    import os

    from dept.training import Trainer

    cores = len(os.sched_getaffinity(0))
    with pytest.raises(ConfigError, match=rf"train.threads={cores + 1}: this machine gives this process {cores}"):
        Trainer(tiny(overrides={"train.threads": cores + 1}))
