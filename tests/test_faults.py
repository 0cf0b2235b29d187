"""A disk that fills up or turns read-only: the command stops with one line naming the file, what was written
stays whole (the last checkpoint loads, prepared sources are complete or absent), and once the cause is gone the
run resumes to exactly what an undisturbed run gives."""

import json
import resource
import signal
import subprocess
import sys

import pytest
import torch

from dept import failpoints
from dept.checkpoint import latest_checkpoint, load_checkpoint
from dept.errors import TrainingError
from dept.training import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def disarmed():
    yield
    failpoints.arm()


def without_timings(run_dir):
    return [{k: v for k, v in json.loads(x).items() if not k.endswith("_s")}
            for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(prepared_root, tmp_path_factory):
    from conftest import make_config

    cfg = make_config(prepared_root, {"run.dir": str(tmp_path_factory.mktemp("ref") / "run")}, variant="trim",
                      rounds=3)
    torch.set_num_threads(1)
    Trainer(cfg, log=lambda *_: None).train()
    return cfg


# the 3rd write is a source's state in round 1, the 9th a file of checkpoint round_00001, the 20th in round 2
@pytest.mark.parametrize("nth,errno_name", [(3, "ENOSPC"), (9, "ENOSPC"), (20, "EROFS")])
def test_a_failing_write_stops_in_one_line_and_the_run_resumes_exactly(tiny, reference, nth, errno_name):
    cfg = tiny(variant="trim", rounds=3)
    failpoints.arm(fail=f"write:{nth}:{errno_name}")
    with pytest.raises(TrainingError) as caught:
        Trainer(cfg, log=lambda *_: None).train()
    message = str(caught.value)
    assert "\n" not in message and str(cfg.run_dir) in message
    assert ("No space left on device" if errno_name == "ENOSPC" else "Read-only file system") in message
    assert f"`dept train --resume {cfg.run_dir}` continues" in message
    if latest_checkpoint(cfg.run_dir) is not None:
        load_checkpoint(latest_checkpoint(cfg.run_dir), cfg.training_fingerprint())  # whole: checksums verified
    failpoints.arm()
    Trainer(cfg, log=lambda *_: None).train(resume=True)
    a, _ = load_checkpoint(latest_checkpoint(reference.run_dir))
    b, _ = load_checkpoint(latest_checkpoint(cfg.run_dir))
    assert all(torch.equal(a.body[k], b.body[k]) for k in a.body)
    assert without_timings(cfg.run_dir) == without_timings(reference.run_dir)


def test_prepare_on_a_failing_disk_leaves_no_half_written_source(prepared_root, tmp_path):
    from conftest import make_config

    from dept.data.prepare import prepare

    cfg = make_config(prepared_root, {"data.dir": str(tmp_path / "data")})
    failpoints.arm(fail="write:3:ENOSPC")  # the global tokenizer, a source's tokenizer... then a meta.json
    with pytest.raises(OSError, match="No space left on device"):
        prepare(cfg, log=lambda *_: None)
    assert not (tmp_path / "data" / "manifest.json").exists()
    assert not list((tmp_path / "data").rglob("*.tmp"))
    failpoints.arm()
    prepare(cfg, log=lambda *_: None)
    for path in (prepared_root / "prepared").rglob("*"):
        if path.is_file() and path.name != ".dept.lock":
            assert (tmp_path / "data" / path.relative_to(prepared_root / "prepared")).read_bytes() == \
                path.read_bytes(), path


def test_a_real_write_limit_gives_one_line_and_a_loadable_checkpoint(tiny, tmp_path):
    """The kernel refuses a file beyond RLIMIT_FSIZE (EFBIG), as a full disk refuses it: no mock here."""
    import yaml

    cfg = tiny(variant="spec_opt", rounds=3)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg.to_resolved_dict()))
    limit = 40_000  # the config fits; the first source state (its table and AdamW moments) does not

    def limit_writes():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "dept", "train", str(config), "train.threads=1"],
                          capture_output=True, text=True, preexec_fn=limit_writes, timeout=300)
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and "File too large" in line and "--resume" in line
    failpoints.arm()
    Trainer(cfg, log=lambda *_: None).train(resume=True)
    assert latest_checkpoint(cfg.run_dir).name == "round_00003"
