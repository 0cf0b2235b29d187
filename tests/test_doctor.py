"""`dept doctor`: a sound run or data folder passes; each kind of damage is found, named, and exits 1."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from dept.cli import app
from dept.training import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def finished_run(prepared_root, tmp_path_factory):
    from conftest import make_config

    root = tmp_path_factory.mktemp("doctor")
    shutil.copytree(prepared_root / "prepared", root / "prepared")
    cfg = make_config(prepared_root, {"run.dir": str(root / "run"), "data.dir": str(root / "prepared")},
                      variant="spec_opt", rounds=3)
    Trainer(cfg, log=lambda *_: None).train()
    return root


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A copy of the finished run and of its data (the copied run reads the copied data)."""
    shutil.copytree(finished_run, tmp_path / "c")
    config = tmp_path / "c" / "run" / "config.yaml"
    config.write_text(config.read_text().replace(str(finished_run), str(tmp_path / "c")))
    return tmp_path / "c" / "run"


def doctor(folder):
    out = CliRunner().invoke(app, ["doctor", str(folder)])
    return out.exit_code, out.output


def test_a_sound_run_and_its_data_pass(run_copy):
    code, out = doctor(run_copy)
    assert code == 0 and out.strip().endswith("no problem found"), out
    assert out.count("ok      ") >= 2 + 2 + 1 + 3 + 3  # config, checkpoints, metrics, states, data sources
    code, out = doctor(run_copy.parent / "prepared")
    assert code == 0 and "PROBLEM" not in out


def flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage,expect", [
    (lambda run: flip(sorted((run / "checkpoints").glob("round_*"))[-1] / "body.safetensors"),
     r"round_00003: PROBLEM|round_00003.*checksum mismatch.*--from-checkpoint"),
    (lambda run: flip(sorted((run / "sources").glob("*/r*.safetensors"))[0]), r"checksum mismatch \(damaged source"),
    (lambda run: [p.unlink() for p in (run / "sources").glob("*/r000002.*")],
     r"which the newest checkpoint needs, is missing"),
    (lambda run: flip(next((run.parent / "prepared" / "sources" / "en" / "global").glob("train.bin"))),
     r"sources/en: missing or damaged: global/train.bin"),
    (lambda run: (run / "config.yaml").write_text("run: [\n"), r"config.yaml: damaged"),
    (lambda run: (run / "results.json").write_text("{"), r"results.json: damaged"),
])
def test_each_damage_is_found_and_named(run_copy, damage, expect):
    import re

    damage(run_copy)
    code, out = doctor(run_copy)
    assert code == 1, out
    problems = [line for line in out.splitlines() if line.startswith("PROBLEM")]
    assert problems and any(re.search(expect, line) for line in problems), out


def test_what_a_resume_mends_is_a_note_not_a_problem(run_copy):
    lines = (run_copy / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run_copy / "metrics.jsonl").write_text("".join(lines[:-2]) + lines[-2][:10])  # cut short
    (run_copy / "sources" / "en" / ".r000002.safetensors.abc.tmp").write_bytes(b"half")
    (run_copy / ".dept.lock").write_text(json.dumps({"pid": 2**22 + 7, "host": "gone", "what": "dept train"}))
    code, out = doctor(run_copy)
    assert code == 0, out
    assert "metrics.jsonl: its lines up to round 3 differ from the copy in round_00003" in out
    assert "left by a stopped write" in out
    assert "in use by dept train" in out  # another host's lock cannot be checked from here: it is respected


def test_a_folder_that_is_neither(tmp_path):
    code, out = doctor(tmp_path)
    assert code == 1 and "neither a run folder" in out
