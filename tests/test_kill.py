"""SIGKILL anywhere, resume, and the run ends bitwise equal to one never stopped (`campaigns/kill.py` is the long
campaign at random moments; this is its quick subset, with the stops at named points inside the processes).

Each stop is a real SIGKILL of a real `dept` process: in a local step, inside an atomic write after its bytes
reached the disk, in the middle of a metrics line, after a source's evaluation, between a folder's two renames.
"""

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "campaigns"))
from kill import Campaign  # noqa: E402


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """One corpus, prepared once; each test names its stops."""
    c = Campaign(tmp_path_factory.mktemp("kill"), random.Random(0), rounds=4)
    c.prepare_reference()
    return c


@pytest.fixture
def campaign(workspace):
    def make(stops):
        workspace.stops = stops
        return workspace
    return make


@pytest.mark.parametrize("job,stops", [
    ("spec_opt", ["step:5", "write:6", "metrics:2"]),
    ("trim_nesterov", ["eval:2"]),
    ("std", ["write:4"]),
])
def test_a_killed_run_resumes_to_the_uninterrupted_result(campaign, job, stops):
    result = campaign(stops).run(job, kills=len(stops))
    assert result.kills == len(stops), result  # every planned stop happened
    assert result.differences == [], result.differences  # checkpoints, source states, metrics, results


def test_a_killed_prepare_and_consolidation_end_as_if_never_stopped(campaign):
    c = campaign(["write:3"])  # a source's meta.json
    result = c.run("prepare", kills=1)
    assert result.kills == 1 and result.differences == [], result
    c = campaign(["step:10"])
    result = c.run("consolidate", kills=1)
    assert result.kills == 1 and result.differences == [], result
