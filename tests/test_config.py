"""Config loading: overrides, clear one-line errors, and every shipped config loads."""

from pathlib import Path

import pytest

from dept.config import apply_overrides, load_config
from dept.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

BASE = """
data:
  sources:
    - {name: a, files: [a.txt]}
"""


def write(tmp_path, text):
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_overrides_set_nested_typed_values(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["train.rounds=20", "train.inner.lr=1e-3", "train.variant=trim",
                                              "data.sources.0.language=en", "train.inner.betas=[0.8, 0.9]"])
    assert cfg.train.rounds == 20 and cfg.train.inner.lr == 1e-3 and cfg.train.variant.value == "trim"
    assert cfg.data.sources[0].language == "en" and cfg.train.inner.betas == (0.8, 0.9)


@pytest.mark.parametrize("text,overrides,message", [
    (BASE + "bogus: 1\n", [], "cfg.yaml: bogus: unknown key"),
    (BASE, ["train.rounds=abc"], "cfg.yaml: train.rounds: Input should be a valid integer"),
    (BASE, ["train.variant=nope"], "train.variant"),
    (BASE, ["train.inner.lrr=1"], "train.inner.lrr: unknown key"),
    (BASE, ["model.d_model=30"], "not divisible by n_heads"),
    ("data: {sources: []}\n", [], "at least one source"),
    ("run: {seed: 1}\n", [], "data: missing required key"),
    (BASE, ["rounds"], "not of the form key.path=value"),
    ("data: [1, 2\n", [], "not valid YAML"),
    ("- a\n- b\n", [], "must be a mapping of sections (run:, data:, ...), not a list"),
    ("42\n", [], "not a number"),
    ("just text\n", [], "not a string"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", [], "nested too deeply"),
    ("base_dir: /elsewhere\n" + BASE, [], "base_dir: unknown key"),
    (BASE, ["run.seed=-1"], "run.seed: Input should be greater than or equal to 0"),
    (BASE, ["train.device=meta"], "train.device"),
    (BASE, ["train.device=foo"], "train.device"),
    (BASE, ["train.inner.lr=inf"], "train.inner.lr: Input should be a finite number"),
    (BASE, ["model.init_std=.inf"], "model.init_std: Input should be a finite number"),
    (BASE, ["model.rope_theta=inf"], "model.rope_theta: Input should be a finite number"),
    (BASE, ["model.norm_eps=nan"], "model.norm_eps: Input should be a finite number"),
])
def test_bad_configs_fail_with_one_line_naming_the_place(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_override_does_not_touch_other_keys():
    tree = {"a": {"b": 1, "c": 2}}
    assert apply_overrides(tree, ["a.b=5"]) == {"a": {"b": 5, "c": 2}}


def test_fingerprint_ignores_bookkeeping_but_not_training(tmp_path):
    p = write(tmp_path, BASE)
    base = load_config(p).training_fingerprint()
    assert load_config(p, ["train.checkpoint_every=5", "eval.every=2"]).training_fingerprint() == base
    assert load_config(p, ["train.local_steps=7"]).training_fingerprint() != base


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.data.sources


def test_global_tokenizer_seed_decouples_prepared_data_from_the_run_seed():
    from dept.data.prepare import fingerprints

    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"

    def global_fp(*overrides):
        return fingerprints(load_config(demo, list(overrides)))[0]

    assert global_fp("run.seed=1") != global_fp("run.seed=2")  # by default the run's seed samples the text
    assert global_fp("run.seed=1", "data.tokenizer.global.seed=0") == global_fp("run.seed=2",
                                                                               "data.tokenizer.global.seed=0")
    assert global_fp("run.seed=0", "data.tokenizer.global.seed=0") == global_fp("run.seed=0")  # same sample
    assert load_config(demo).training_fingerprint() != load_config(
        demo, ["data.tokenizer.global.seed=0"]).training_fingerprint()


@pytest.mark.parametrize("name", ["cuda", "cuda:99"])
def test_a_device_this_machine_lacks_is_one_line(name):
    import torch

    from dept.algorithm.runtime import resolve_device

    if torch.cuda.is_available() and name == "cuda":
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(ConfigError) as err:
        resolve_device(name)
    assert f"train.device={name}" in str(err.value) and "\n" not in str(err.value)
