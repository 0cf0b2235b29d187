"""Fuzzed bad input (hypothesis): the quick CI subset of `python campaigns/fuzz.py` (same generators, same check).

Every generated config, override, data file, CLI option and damaged run folder ends in correct handling or a
one-line error with a non-zero exit: never a traceback, never a half-written folder. The regressions below are
cases the campaign found (each was a traceback before its fix).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "campaigns"))
import fuzz_cases as fc  # noqa: E402

# Derandomized: CI sees the same cases each run; the campaign (`--seed`) explores.
QUICK = settings(deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> fc.Env:
    return fc.Env.build(tmp_path_factory.mktemp("fuzz"))


def check(world: fc.Env, family: str, case: dict) -> None:
    verdict = fc.run_case(world, family, case)
    assert verdict.ok, verdict.describe()


@settings(QUICK, max_examples=40)
@given(data=st.data())
def test_configs(world, data):
    check(world, "config", data.draw(fc.strategy("config", world)))


@settings(QUICK, max_examples=30)
@given(data=st.data())
def test_overrides(world, data):
    check(world, "overrides", data.draw(fc.strategy("overrides", world)))


@settings(QUICK, max_examples=30)
@given(data=st.data())
def test_data_files(world, data):
    check(world, "data", data.draw(fc.strategy("data", world)))


@settings(QUICK, max_examples=15)
@given(data=st.data())
def test_cli_options(world, data):
    check(world, "cli", data.draw(fc.strategy("cli", world)))


@settings(QUICK, max_examples=30)
@given(data=st.data())
def test_damaged_run_folders(world, data):
    check(world, "run_folder", data.draw(fc.strategy("run_folder", world)))


def _damage(target: str, how: str, junk: bytes = b"\xa0") -> dict:
    return {"target": target, "how": how, "at": 0.5, "bit": 3, "junk": junk}


def _cli(*argv: str) -> dict:
    return {"command": argv[0], "argv": list(argv)}


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


EXAMPLES = {"name": "train.csv", "content": b"text,label\nthe cat,a\nthe dog,b\nle chat,a\nle chien,b\n"}

REGRESSIONS = {
    # data files
    "empty delimiter": ("data", {"files": [{"name": "f0.txt", "content": b"a b\n\nc d"}], "text_field": "text",
                                 "delimiter": "", "min_doc_chars": 1, "unseen": False, "glob": "each",
                                 "expect_docs": None, "bad": None}),
    "empty parquet": ("data", {"files": [{"name": "f0.parquet", "content": b""}], "text_field": "text",
                               "delimiter": None, "min_doc_chars": 1, "unseen": False, "glob": "each",
                               "expect_docs": None, "bad": "empty parquet"}),
    "garbage parquet": ("data", {"files": [{"name": "f0.parquet", "content": b"PAR1\x941\xd9O^"}],
                                 "text_field": "text", "delimiter": None, "min_doc_chars": 1, "unseen": True,
                                 "glob": "each", "expect_docs": None, "bad": "garbage parquet"}),
    "lone surrogate": ("data", {"files": [{"name": "f0.jsonl", "content": b'{"text": "ok ok"}\n{"text": "a\\ud800b"}'}],
                                "text_field": "text", "delimiter": None, "min_doc_chars": 1, "unseen": False,
                                "glob": "each", "expect_docs": None, "bad": "a lone surrogate"}),
    # configs and overrides
    "vertical tab in a key": ("config", {"command": "comms", "raw": None, "ops": [["set", "\x0blr", "bpe"]],
                                         "bad": "unknown key"}),
    "resume into a missing run.dir": ("overrides", {"overrides": ["run.dir=elsewhere/x"], "target": "resume",
                                                    "bad": None}),
    "train.engine=torchrun outside torchrun": ("overrides", {"overrides": ["train.engine=torchrun"],
                                                             "target": "resume", "bad": None}),
    # CLI options (the run's model for source en)
    "generate: a temperature of 1e-320": ("cli", _cli("generate", "{RUN}", "the", "--source", "en", "--temperature",
                                                     "1e-320", "--max-new-tokens", "3")),
    "generate: a seed beyond 64 bits": ("cli", _cli("generate", "{RUN}", "the", "--source", "en", "--seed",
                                                    "99999999999999999999999", "--max-new-tokens", "3")),
    "generate: --device junk": ("cli", _cli("generate", "{RUN}", "x", "--source", "en", "--device", "junk")),
    "generate: --device cuda without CUDA": ("cli", _cli("generate", "{RUN}", "x", "--source", "en", "--device",
                                                         "cuda" if not _has_cuda() else "cuda:99")),
    "consolidate: --lr nan": ("cli", _cli("consolidate", "{RUN}", "--out", "{OUT}", "--steps", "1", "--lr", "nan")),
    "consolidate: --lr 1e308 diverges": ("cli", _cli("consolidate", "{RUN}", "--out", "{OUT}", "--steps", "1", "--lr",
                                                     "1e308")),
    "adapt: --lr nan": ("cli", _cli("adapt", "{RUN}", "--source", "new={CORPUS}/ru.jsonl", "--out", "{OUT}",
                                    "--steps", "1", "--lr", "nan")),
    "adapt: a negative --seed": ("cli", _cli("adapt", "{RUN}", "--source", "new={CORPUS}/ru.jsonl", "--out", "{OUT}",
                                             "--steps", "1", "--seed", "-5")),
    "adapt: a negative --vocab-size": ("cli", _cli("adapt", "{RUN}", "--source", "new={CORPUS}/ru.jsonl", "--out",
                                                    "{OUT}", "--steps", "1", "--vocab-size", "-1")),
    "consolidate: a negative --batch-size": ("cli", _cli("consolidate", "{RUN}", "--out", "{OUT}", "--steps", "1",
                                                         "--batch-size", "-99999999999999999999999")),
    "finetune: --lr nan": ("cli", {**_cli("finetune", "{RUN}", "--source", "en", "--train", "{TRAIN}", "--eval",
                                          "{EVAL}", "--epochs", "1", "--lr", "nan"), "examples": EXAMPLES}),
    "finetune: --lr 1e308 diverges": ("cli", {**_cli("finetune", "{RUN}", "--source", "en", "--train", "{TRAIN}",
                                                     "--eval", "{EVAL}", "--epochs", "1", "--lr", "1e308"),
                                              "examples": EXAMPLES, "bad": "diverges"}),
    # damaged run folders
    "manifest not JSON": ("run_folder", {"damages": [_damage("checkpoints/round_00002/manifest.json", "truncate")],
                                         "command": "eval", "bad": "manifest"}),
    "manifest null": ("run_folder", {"damages": [_damage("checkpoints/round_00002/manifest.json", "null")],
                                     "command": "resume", "bad": "manifest"}),
    "manifest without files": ("run_folder", {"damages": [_damage("checkpoints/round_00002/manifest.json",
                                                                  "empty_object")], "command": "generate",
                                              "bad": "manifest"}),
    "run config not UTF-8": ("run_folder", {"damages": [_damage("config.yaml", "binary")], "command": "eval"}),
    "data.json not UTF-8": ("run_folder", {"damages": [_damage("data.json", "binary", b"]\xefz\x89")],
                                           "command": "eval"}),
    "metrics not UTF-8": ("run_folder", {"damages": [_damage("metrics.jsonl", "append", b"\n\xbe[]\n[]\n")],
                                         "command": "resume"}),
    "a source state's field renamed": ("run_folder", {"damages": [{"target": "sources/en/r000001.json",
                                                                  "how": "bitflip", "at": 0.9456968494961848,
                                                                  "bit": 5, "junk": b"x"}], "command": "eval"}),
    "checkpoints is a file": ("run_folder", {"damages": [_damage("checkpoints", "binary")], "command": "resume"}),
    "a file where the newest checkpoint was": ("run_folder", {"damages": [_damage("checkpoints/round_00002",
                                                                               "binary")], "command": "resume"}),
    "results.json is a folder": ("run_folder", {"damages": [_damage("results.json", "make_dir")],
                                                "command": "resume"}),
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_regression(world, name):
    family, case = REGRESSIONS[name]
    check(world, family, {"bad": None, **case})
