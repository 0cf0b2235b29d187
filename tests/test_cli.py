"""The command line: bad input gives one line on stderr, a non-zero exit, and nothing half-written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_tree, write_corpus

ENV = {**os.environ, "COLUMNS": "200"}


def dept(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "dept.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=300)


def write_config(path: Path, tree: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(tree))
    return path


def assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_unknown_key(tmp_path):
    tree = tiny_tree(tmp_path)
    tree["train"]["roundz"] = 3
    proc = dept("prepare", write_config(tmp_path / "c.yaml", tree))
    assert_one_line_error(proc, "c.yaml", "train.roundz: unknown key")
    assert not (tmp_path / "prepared").exists()


def test_non_utf8_source_leaves_nothing_behind(tmp_path):
    write_corpus(tmp_path / "corpus", docs_per_source=5)
    with open(tmp_path / "corpus" / "fr.jsonl", "ab") as f:
        f.write(b'{"text": "caf\xe9"}\n')
    proc = dept("prepare", write_config(tmp_path / "c.yaml", tiny_tree(tmp_path)))
    assert_one_line_error(proc, "fr.jsonl:6", "not valid UTF-8")
    assert not (tmp_path / "prepared").exists()


def test_missing_files(tmp_path):
    proc = dept("prepare", write_config(tmp_path / "c.yaml", tiny_tree(tmp_path)))
    assert_one_line_error(proc, "source 'en'", "no file matches")


def test_train_before_prepare(tmp_path):
    proc = dept("train", write_config(tmp_path / "c.yaml", tiny_tree(tmp_path)))
    assert_one_line_error(proc, "no prepared data", "dept prepare")
    assert not (tmp_path / "run").exists()


def test_too_little_text_for_one_batch(prepared_root, tmp_path):
    tree = tiny_tree(prepared_root)
    tree["run"]["dir"] = str(tmp_path / "run")
    tree["train"]["batch_size"] = 100_000
    proc = dept("train", write_config(tmp_path / "c.yaml", tree))
    assert_one_line_error(proc, "too little text for one batch")
    assert not (tmp_path / "run").exists()


def test_train_resume_and_eval(prepared_root, tmp_path):
    tree = tiny_tree(prepared_root)
    tree["run"]["dir"] = str(tmp_path / "run")
    tree["train"].update(rounds=2, variant="trim")
    cfg = write_config(tmp_path / "c.yaml", tree)
    proc = dept("train", cfg)
    assert proc.returncode == 0, proc.stderr
    assert "bits/byte" in proc.stdout and "ru (unseen)" in proc.stdout and "mean (unseen sources)" in proc.stdout
    again = dept("train", cfg)
    assert_one_line_error(again, "already holds a run")
    other = dept("train", "--resume", tmp_path / "run", "train.inner.lr=0.5")
    assert_one_line_error(other, "trained with other values of train.inner.lr")
    metrics_before = (tmp_path / "run" / "metrics.jsonl").read_text()
    done = dept("train", "--resume", tmp_path / "run")  # already finished: re-evaluates, same results
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics_before  # no second eval line
    ev = dept("eval", tmp_path / "run")
    assert ev.returncode == 0, ev.stderr
    a = json.loads((tmp_path / "run" / "results.json").read_text())
    b = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert [r["bpb"] for r in a["results"]] == pytest.approx([r["bpb"] for r in b["results"]])


def test_comms_shows_the_papers_714x():
    proc = dept("comms", "--preset", "paper-mc4-1.7b")
    assert proc.returncode == 0, proc.stderr
    spec_rows = [line for line in proc.stdout.splitlines() if line.strip("│ ").startswith("SPEC")]
    assert spec_rows and all("714×" in row for row in spec_rows[:2])
    # per round at 1 and 10 Gbit/s: SPEC's 4,792 MB at 1 Gbit/s is 38.3 s; STD's N all-reduces take 7.6 h
    timing = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
              for line in proc.stdout.split("per round at line rate")[1].splitlines() if line.startswith("│")}
    assert timing["SPEC"][:2] == ["38.3 s", "3.8 s"] and timing["STD"][:2] == ["7.6 h", "45.6 min"]
    assert timing["SPEC-OPT"][-2:] == ["411.7 MB", "3.29 GB"]  # its own 50,257 x 2,048 table; K = 8 sites


@pytest.mark.parametrize("args", [("--bandwidth", "0"), ("--bandwidth", "fast"), ("--sources", "-1")])
def test_comms_refuses_bad_link_figures(args):
    proc = dept("comms", "--preset", "paper-mc4-1.7b", *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_help_lists_every_command():
    out = dept("--help").stdout
    for command in ("prepare", "train", "eval", "compare", "comms", "settings"):
        assert command in out
    assert "train.inner.lr" in dept("settings").stdout


def test_relative_paths_survive_resume_and_eval(tmp_path):
    """A config with paths relative to its file, run from elsewhere, resumes from the run folder's copy."""
    write_corpus(tmp_path / "proj" / "corpus", docs_per_source=20)
    tree = tiny_tree(Path("."))  # every path relative: corpus/..., prepared, run
    tree["train"].update(rounds=2, checkpoint_every=1)
    tree["data"]["sources"] = tree["data"]["sources"][:2]
    tree["train"]["sources_per_round"] = 1
    cfg = write_config(tmp_path / "proj" / "c.yaml", tree)
    assert dept("prepare", cfg, cwd=tmp_path).returncode == 0
    first = dept("train", cfg, "train.rounds=2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run = tmp_path / "proj" / "run"
    resumed = dept("train", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr
    assert dept("eval", run).returncode == 0
    (tmp_path / "proj" / "corpus" / "en.jsonl").write_text('{"text": "changed"}\n' * 30)
    stale = dept("train", "--resume", run)
    assert_one_line_error(stale, "does not match source 'en'", "dept prepare")


def test_compare_keeps_apart_from_train_and_reuses_finished_runs_only_of_the_same_config(prepared_root, tmp_path):
    tree = tiny_tree(prepared_root)
    tree["run"]["dir"] = str(tmp_path / "runs")
    tree["train"].update(rounds=1)
    cfg = write_config(tmp_path / "c.yaml", tree)
    proc = dept("compare", cfg, "--variants", "spec_opt,std")
    assert proc.returncode == 0, proc.stderr
    assert "MB communicated" in proc.stdout and "less than STD" in proc.stdout
    compared = tmp_path / "runs-compare"
    assert sorted(p.name for p in compared.iterdir()) == ["comparison.json", "comparison.md", "spec_opt", "std"]
    assert not (tmp_path / "runs").exists()  # `dept train CONFIG`'s folder is not compare's
    trained = dept("train", cfg)
    assert trained.returncode == 0, trained.stderr
    assert not (tmp_path / "runs" / "spec_opt").exists() and "runs-compare" not in trained.stdout
    assert json.loads((tmp_path / "runs" / "results.json").read_text())["variant"] == "spec_opt"

    def variant_files():
        return {p: (p.stat().st_mtime_ns, p.read_bytes()) for v in ("spec_opt", "std")
                for p in (compared / v).rglob("*") if p.is_file()}

    before, train_run = variant_files(), {p: p.read_bytes() for p in (tmp_path / "runs").rglob("*") if p.is_file()}
    again = dept("compare", cfg, "--variants", "spec_opt,std")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("reused, nothing trained") == 2 and "round 1/1" not in again.stdout
    assert variant_files() == before  # not a byte or a timestamp changed
    assert {p: p.read_bytes() for p in (tmp_path / "runs").rglob("*") if p.is_file()} == train_run

    (compared / "std" / "results.json").unlink()  # stopped after its last checkpoint, before its results
    rounds = (compared / "std" / "metrics.jsonl").read_text().count('"event": "round"')
    resumed = dept("compare", cfg, "--variants", "std")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "round 1/1" not in resumed.stdout
    assert (compared / "std" / "results.json").is_file()
    assert (compared / "std" / "metrics.jsonl").read_text().count('"event": "round"') == rounds

    before = variant_files()
    changed = dept("compare", cfg, "train.inner.lr=0.01", "--variants", "spec_opt")
    assert_one_line_error(changed, "holds a finished run of another config", "train.inner.lr")
    assert variant_files() == before
    (compared / "std" / "results.json").unlink()
    unfinished = dept("compare", cfg, "train.inner.lr=0.01", "--variants", "std")
    assert_one_line_error(unfinished, "holds an unfinished run of another config", "train.inner.lr")
    bad = dept("compare", cfg, "--variants", "spec,nope")
    assert_one_line_error(bad, "unknown variant 'nope'")


def prepared_and_trained(tmp_path: Path) -> Path:
    """A corpus of its own, prepared, and one round of SPEC trained on it: the config's path."""
    write_corpus(tmp_path / "corpus", docs_per_source=30)
    tree = tiny_tree(tmp_path)
    tree["train"].update(rounds=1, variant="spec")
    cfg = write_config(tmp_path / "c.yaml", tree)
    assert dept("prepare", cfg).returncode == 0
    trained = dept("train", cfg)
    assert trained.returncode == 0, trained.stderr
    return cfg


def test_eval_needs_only_the_prepared_data(tmp_path):
    """The raw corpus is gone (a site that kept only its prepared folder): `dept eval` still evaluates the run."""
    prepared_and_trained(tmp_path)
    checkpoint = tmp_path / "run" / "checkpoints" / "round_00001"
    assert (checkpoint / "config.yaml").read_text() == (tmp_path / "run" / "config.yaml").read_text()
    for f in (tmp_path / "corpus").iterdir():
        f.unlink()
    ev = subprocess.run([sys.executable, "-m", "dept", "eval", tmp_path / "run"], capture_output=True, text=True,
                        env=ENV, timeout=300)
    assert ev.returncode == 0, ev.stderr
    a = json.loads((tmp_path / "run" / "results.json").read_text())
    b = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert [(r["bpb"], r["bytes"]) for r in a["results"]] == [(r["bpb"], r["bytes"]) for r in b["results"]]
    assert dept("train", "--resume", tmp_path / "run").returncode != 0  # training does check the raw inputs


def test_eval_refuses_prepared_data_that_changed_since_training(tmp_path):
    cfg = prepared_and_trained(tmp_path)
    assert dept("prepare", cfg, "data.val_fraction=0.2").returncode == 0
    assert_one_line_error(dept("eval", tmp_path / "run"), "changed since", "trained on it")


def test_the_old_token_cap_is_refused_with_its_replacement(prepared_root, tmp_path):
    tree = tiny_tree(prepared_root)
    tree["eval"] = {"max_tokens": 256}
    assert_one_line_error(dept("train", write_config(tmp_path / "c.yaml", tree)), "eval", "max_bytes")


@pytest.mark.parametrize("args,fragment", [
    (("comms", "--vocab", "-5"), "--vocab"), (("comms", "--trim-fraction", "5"), "--trim-fraction"),
    (("comms", "--dtype-bytes", "0"), "--dtype-bytes"), (("comms", "--n-layers", "-2"), "--n-layers"),
    (("comms", "--mlp", "foo"), "--mlp"), (("comms", "--local-steps", "0"), "--local-steps"),
    (("comms", "--d-model", "0"), "--d-model"), (("comms", "--local-steps", "abc"), "--local-steps"),
    (("compare", "configs/demo.yaml", "--variants", ","), "--variants"),
    (("eval", "runs/nowhere", "--max-bytes", "-1"), "--max-bytes"),
    (("eval", "runs/nowhere", "--max-tokens", "5"), "--max-tokens"),
    (("eval",), "RUN_DIR"),
])
def test_bad_options_are_one_line_naming_the_option(args, fragment):
    proc = dept(*args, cwd=Path(__file__).resolve().parents[1])
    assert_one_line_error(proc, fragment)
    assert proc.returncode == 2 and fragment in proc.stderr


def test_a_folder_in_use_is_refused_and_a_stale_lock_taken_over(tmp_path):
    from dept.folder_lock import LOCK_NAME, FolderLock

    write_corpus(tmp_path / "corpus")
    cfg = write_config(tmp_path / "c.yaml", tiny_tree(tmp_path))
    data, run = tmp_path / "prepared", tmp_path / "run"
    data.mkdir()
    with FolderLock(data, "a test"):  # this process, alive: a second writer is refused
        proc = dept("prepare", cfg)
        assert_one_line_error(proc, str(data), "in use by a test", f"pid {os.getpid()}")
        assert not (data / "manifest.json").exists()
    assert not (data / LOCK_NAME).exists()  # released
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = {"pid": int(gone.stdout), "host": __import__("socket").gethostname(), "started": 0, "what": "dept train"}
    (data / LOCK_NAME).write_text(json.dumps(dead))  # left by a process that was killed
    proc = dept("prepare", cfg)
    assert proc.returncode == 0, proc.stderr
    assert "taking over the lock" in proc.stdout + proc.stderr and not (data / LOCK_NAME).exists()
    assert dept("train", cfg, "train.rounds=1").returncode == 0
    with FolderLock(run, "a test"):
        assert_one_line_error(dept("train", "--resume", run), str(run), "in use by a test")


def test_a_copied_or_moved_run_folder_works_where_it_is_and_never_touches_the_original(tmp_path):
    import shutil

    write_corpus(tmp_path / "corpus")
    cfg = write_config(tmp_path / "c.yaml", tiny_tree(tmp_path))
    assert dept("prepare", cfg).returncode == 0
    assert dept("train", cfg, "train.rounds=2").returncode == 0
    original = tmp_path / "run"
    before = {p: p.read_bytes() for p in original.rglob("*") if p.is_file()}
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(original, copy)
    for args in (("eval", copy), ("train", "--resume", copy)):
        proc = dept(*args)
        assert proc.returncode == 0, proc.stderr
    assert (copy / "eval.json").is_file() and not (original / "eval.json").exists()
    assert {p: p.read_bytes() for p in original.rglob("*") if p.is_file()} == before
    moved = tmp_path / "moved"
    shutil.move(str(original), moved)
    proc = dept("eval", moved)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((moved / "eval.json").read_text())["results"]


def test_ctrl_c_stops_with_the_resume_command_and_resume_finishes(prepared_root, tmp_path):
    import signal
    import time

    tree = tiny_tree(prepared_root)
    tree["run"]["dir"] = str(tmp_path / "run")
    tree["train"].update(rounds=2, local_steps=150)  # round 2 is long enough to be inside when the signal comes
    cfg = write_config(tmp_path / "c.yaml", tree)
    proc = subprocess.Popen([sys.executable, "-m", "dept.cli", "train", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 120
    while not list((tmp_path / "run" / "checkpoints").glob("round_*")) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith(f"stopped; `dept train --resume {tmp_path / 'run'}` continues "
                                                   "from round_")
    done = dept("train", "--resume", tmp_path / "run")
    assert done.returncode == 0, done.stderr
    rounds = [json.loads(x)["round"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["event"] == "round"]
    assert rounds == list(range(2))


def test_damaged_source_state_is_named_and_an_older_checkpoint_recovers_the_same_run(prepared_root, tmp_path):
    tree = tiny_tree(prepared_root)
    tree["run"]["dir"] = str(tmp_path / "run")
    tree["train"].update(rounds=3, variant="spec_opt", keep_checkpoints=2)
    cfg = write_config(tmp_path / "c.yaml", tree)
    assert dept("train", cfg).returncode == 0
    run = tmp_path / "run"
    final_manifest = (run / "checkpoints" / "round_00003" / "manifest.json").read_text()
    last = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    trained_last = [r for r in last if r["event"] == "round"][-1]["sources"][0]
    damaged = run / "sources" / trained_last / "r000002.safetensors"
    data = bytearray(damaged.read_bytes())
    data[-3] ^= 0x10  # one bit, inside the tensors
    damaged.write_bytes(bytes(data))
    for args in (("eval", run), ("train", "--resume", run)):
        assert_one_line_error(dept(*args), str(damaged), "checksum mismatch")
    (run / "sources" / trained_last / "r000002.json").unlink()  # a deleted version is no excuse to use an older one
    assert_one_line_error(dept("eval", run), "r000002.json: missing")
    back = dept("train", "--resume", run, "--from-checkpoint", "2")  # round 3 again, from round_00002
    assert back.returncode == 0, back.stderr
    files = json.loads((run / "checkpoints" / "round_00003" / "manifest.json").read_text())["files"]
    want = json.loads(final_manifest)["files"]
    del files["metrics.jsonl"], want["metrics.jsonl"]  # its round lines hold timings
    assert files == want  # the same run: body, tables, outer state, trainer state, config
    assert (run / "checkpoints" / ".discarded" / "round_00003").is_dir()
    assert_one_line_error(dept("train", "--resume", run, "--from-checkpoint", "9"), "no checkpoint round_00009")
