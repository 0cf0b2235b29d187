"""From a run to models people use: model folders, consolidation, adaptation, generation, and their bad input."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_config

from dept.algorithm.source_store import SourceStore
from dept.data.prepared import PreparedData
from dept.data.tokenizer import load_tokenizer
from dept.errors import CheckpointError, DeptError
from dept.model import Body, LanguageModel, SourceEmbedding
from dept.posttrain.adapt import AdaptSettings, adapt
from dept.posttrain.consolidate import Consolidator, consolidate
from dept.posttrain.folder import ModelFolder, ModelFolderError
from dept.posttrain.from_run import RunModels
from dept.posttrain.generate import Sampling, generate, next_token_probs
from dept.posttrain.hf import export_folder
from dept.posttrain.load import load_model
from dept.training import run_training

quiet = dict(log=lambda *_: None)


@pytest.fixture(scope="module")
def runs(prepared_root, tmp_path_factory):
    """Finished tiny runs of three variants on the shared prepared corpus."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for variant in ("spec_opt", "spec", "glob", "trim", "std"):
        cfg = make_config(prepared_root, {"run.dir": str(root / variant), "train.inner.lr": 3e-3},
                          variant=variant, rounds=3, local_steps=6, sources_per_round=3)
        run_training(cfg, **quiet)
        out[variant] = cfg.run_dir
    return out


def test_spec_opt_source_model_is_its_own_table_and_tokenizer(runs):
    models = RunModels(runs["spec_opt"])
    folder = models.source_model("fr")
    saved = SourceStore(runs["spec_opt"] / "sources").load_after("fr", models.state.last_round["fr"])
    assert torch.equal(folder.embedding["tokens"], saved.embedding["tokens"])
    own = load_tokenizer(models.data.source("fr").own_tokenizer_path())
    assert folder.tokenizer.get_vocab() == own.get_vocab() and folder.vocab_size == own.get_vocab_size()
    assert all(torch.equal(folder.body[k], models.shared.body[k]) for k in models.shared.body)


def test_spec_source_model_scores_held_tokens_as_training_did(runs):
    """SPEC's folder places the V_k rows at their global ids and zeros elsewhere: for inputs and targets inside
    V_k, its logits over V_k are the V_k-table model's logits, and every other logit is 0."""
    models = RunModels(runs["spec"])
    folder = models.source_model("en")
    held = torch.from_numpy(models.data.source("en").trim_vocab()).long()
    saved = SourceStore(runs["spec"] / "sources").load_after("en", models.state.last_round["en"])
    body = Body(models.cfg.model)
    body.load_state_dict(models.shared.body)
    small = LanguageModel(body, SourceEmbedding(held.numel(), models.cfg.model)).eval()
    small.embedding.load_tensors(saved.embedding)
    rows = torch.tensor([[0, 3, 5, 7, 2, 9, 11, 4]]) % held.numel()
    with torch.no_grad():
        big_logits = folder.language_model()(held[rows])
        small_logits = small(rows)
    assert torch.allclose(big_logits[..., held], small_logits, atol=1e-5)
    outside = torch.ones(folder.vocab_size, dtype=torch.bool)
    outside[held] = False
    assert outside.any() and torch.all(big_logits[..., outside] == 0)


@pytest.mark.parametrize("variant", ["spec_opt", "spec", "glob", "trim", "std"])
def test_every_variant_gives_each_trained_source_a_usable_model(runs, variant):
    """Each source's model folder scores the source's validation text with its own tokenizer: finite bits per
    byte, better than the uniform guess over the vocabulary."""
    from dept.posttrain.scoring import score_documents

    models = RunModels(runs[variant])
    data = models.data
    for name in models.trained_names:
        folder = models.source_model(name)
        assert folder.vocab_size == folder.tokenizer.get_vocab_size()
        docs = [d for d in open(models.cfg.data.sources[models.source_names.index(name)].files[0])][:3]
        texts = [json.loads(d)["text"] for d in docs]
        res, _ = score_documents(folder.language_model(), folder.tokenizer, texts, 16, 4096)
        uniform = math.log2(folder.vocab_size) * res.tokens / res.bytes
        assert 0 < res.bits_per_byte < uniform, (variant, name)
    assert data.global_vocab_size > 0


def test_model_folder_round_trip_and_every_form_generates_the_same_text(runs, tmp_path):
    run_model = load_model(runs["spec_opt"], "en")
    run_model.save(tmp_path / "m")
    exported = export_folder(run_model, tmp_path / "hf")
    settings = Sampling(max_new_tokens=12, temperature=1.0, top_k=20, top_p=0.95, seed=7, stop_at_eos=False)
    texts = [generate(load_model(p, s), "the of", settings).ids
             for p, s in ((runs["spec_opt"], "en"), (tmp_path / "m", None), (exported, None))]
    assert texts[0] == texts[1] == texts[2] and len(texts[0]) == 12
    again = generate(ModelFolder.load(tmp_path / "m"), "the of", settings)
    assert again.ids == texts[0]
    other = generate(ModelFolder.load(tmp_path / "m"), "the of", Sampling(12, 1.0, 0, 1.0, seed=8, stop_at_eos=False))
    assert other.ids != texts[0]


def test_sampling_distribution_by_hand():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    p = next_token_probs(logits, Sampling(temperature=1.0))
    assert torch.allclose(p, torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64))
    # top-p 0.6: 0.5 alone is below 0.6, so the second token joins; renormalised 0.5/0.8, 0.3/0.8
    p = next_token_probs(logits, Sampling(temperature=1.0, top_p=0.6))
    assert torch.allclose(p, torch.tensor([0.625, 0.375, 0, 0], dtype=torch.float64))
    p = next_token_probs(logits, Sampling(temperature=1.0, top_k=3))
    assert torch.allclose(p, torch.tensor([0.5, 0.3, 0.15, 0], dtype=torch.float64) / 0.95)
    # temperature 2: p ∝ sqrt(p)
    root = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64).sqrt()
    assert torch.allclose(next_token_probs(logits, Sampling(temperature=2.0)), root / root.sum())


def test_generation_stops_at_end_of_text(runs):
    folder = load_model(runs["glob"])
    eos_first = folder.embedding["tokens"].clone()
    folder.embedding["tokens"] = eos_first
    folder.embedding["tokens"][0] = 50 * folder.embedding["tokens"].std() * torch.ones_like(eos_first[0])
    body_out = folder.language_model()(torch.tensor([[0, 5, 6]]))[0, -1]
    if int(body_out.argmax()) != 0:  # make end-of-text the greedy choice whatever the body gives
        pytest.skip("could not make end of text the likeliest token")
    out = generate(folder, "x", Sampling(max_new_tokens=5, temperature=0))
    assert out.stopped_at_eos and out.ids == []


def test_consolidation_lowers_spec_opt_bits_per_byte_and_resumes_exactly(runs, tmp_path):
    result = consolidate(runs["spec_opt"], tmp_path / "c", steps=6, lr=3e-3, **quiet)
    trained = [r for r in result.rows if not r.unseen]
    assert len(trained) == 3 and [r for r in result.rows if r.unseen]
    assert result.mean("after_bpb") < result.mean("before_bpb")
    assert all(r.run_bpb is not None for r in result.rows)
    folder = ModelFolder.load(tmp_path / "c")
    assert folder.origin["kind"] == "consolidated" and folder.vocab_size == PreparedData(
        RunModels(runs["spec_opt"]).cfg.data_dir).global_vocab_size
    # stopped after 4 steps, then resumed: the same model as the uninterrupted consolidation
    first = consolidate(runs["spec_opt"], tmp_path / "r", steps=6, lr=3e-3, stop_after=4, **quiet)
    assert not first.finished and not (tmp_path / "r").exists()
    with pytest.raises(DeptError, match="--resume"):
        consolidate(runs["spec_opt"], tmp_path / "r", steps=6, lr=3e-3, **quiet)
    with pytest.raises(CheckpointError, match="other settings"):
        consolidate(runs["spec_opt"], tmp_path / "r", steps=7, lr=3e-3, resume=True, **quiet)
    resumed = consolidate(runs["spec_opt"], tmp_path / "r", steps=6, lr=3e-3, resume=True, **quiet)
    assert resumed.losses == result.losses
    again = ModelFolder.load(tmp_path / "r")
    for name, t in folder.tensors().items():
        assert torch.equal(t, again.tensors()[name]), name


def test_consolidation_starts_from_the_runs_table_at_half_the_peak(runs):
    glob, spec = Consolidator(runs["glob"], **quiet), Consolidator(runs["spec"], **quiet)
    cfg = glob.cfg
    assert glob.plan.from_run_table and glob.plan.peak_lr == cfg.train.inner.lr / 2
    assert not spec.plan.from_run_table and spec.plan.peak_lr == cfg.train.inner.lr
    assert glob.plan.steps == round(0.15 * cfg.train.rounds * cfg.train.local_steps)
    lm = glob._start_model()
    assert torch.equal(lm.embedding.tokens.weight.detach(), glob.models.shared.embedding["tokens"])


def _new_source_files(root, n_docs=40):
    rng = np.random.default_rng(0)
    words = "der die das und ist nicht ein eine zu mit von sich auf".split()
    path = root / "de.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n_docs):
            f.write(json.dumps({"text": " ".join(rng.choice(words, 100))}) + "\n")
    return path


def test_adaptation_lowers_bits_per_byte_and_a_frozen_body_stays_bitwise(runs, tmp_path):
    files = [str(_new_source_files(tmp_path))]
    settings = AdaptSettings(steps=8, eval_every=4, freeze_body=True, lr=1e-2)
    result = adapt([runs["spec_opt"], runs["glob"]], "de", files, tmp_path / "out", settings, vocab_size=300,
                   **quiet)
    for curve in result.curves:
        assert curve.steps == [0, 4, 8] and curve.bpb[-1] < curve.bpb[0]
    for label, run in (("spec_opt", runs["spec_opt"]), ("glob", runs["glob"])):
        folder = ModelFolder.load(tmp_path / "out" / label)
        body = RunModels(run).shared.body
        assert all(torch.equal(folder.body[k], body[k]) for k in body)
        assert folder.origin["kind"] == "adapted" and folder.vocab_size == result.documents["vocab_size"]
    assert (tmp_path / "out" / "plasticity.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "out" / "adaptation.json").read_text())
    assert [c["label"] for c in saved["curves"]] == ["spec_opt", "glob"]


def test_adaptation_with_the_body_trained_changes_it(runs, tmp_path):
    files = [str(_new_source_files(tmp_path))]
    adapt([runs["spec"]], "de", files, tmp_path / "one", AdaptSettings(steps=2, eval_every=2), vocab_size=300,
          **quiet)
    folder = ModelFolder.load(tmp_path / "one")
    body = RunModels(runs["spec"]).shared.body
    assert not all(torch.equal(folder.body[k], body[k]) for k in body)


def test_bad_input_is_one_clear_error(runs, prepared_root, tmp_path):
    empty = make_config(prepared_root, {"run.dir": str(tmp_path / "empty")})
    empty.run_dir.mkdir()
    (empty.run_dir / "config.yaml").write_text((runs["glob"] / "config.yaml").read_text())
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_model(empty.run_dir, "en")
    with pytest.raises(DeptError, match="source 'xx' is not in run"):
        load_model(runs["spec_opt"], "xx")
    with pytest.raises(DeptError, match="never trained"):
        load_model(runs["spec_opt"], "ru")  # unseen: SPEC-OPT has no table for it
    with pytest.raises(DeptError, match="no global table"):
        load_model(runs["spec"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ModelFolderError, match="elsewhere"):
        load_model(elsewhere)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ModelFolderError, match="not a dept model folder"):
        load_model(tmp_path / "nothing")
    with pytest.raises(DeptError, match="top-p"):
        generate(load_model(runs["glob"]), "x", Sampling(top_p=0))


def test_cli_errors_are_one_line_with_nonzero_exit(runs, tmp_path):
    (tmp_path / "empty.csv").write_text("")
    for args in (["generate", str(runs["spec_opt"]), "hi", "--source", "xx"],
                 ["export", str(runs["spec"]), "--out", str(tmp_path / "x")],
                 ["adapt", str(runs["glob"]), "--source", "de"],
                 ["finetune", str(runs["glob"]), "--train", str(tmp_path / "empty.csv"), "--eval",
                  str(tmp_path / "empty.csv")]):
        proc = subprocess.run([sys.executable, "-m", "dept", *args], capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "x").exists()


def test_cli_consolidate_prints_the_table(runs, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dept", "consolidate", str(runs["glob"]), "--out",
                           str(tmp_path / "c"), "--steps", "2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "mean (trained sources)" in proc.stdout and "(unseen)" in proc.stdout
    out = json.loads((tmp_path / "c" / "consolidation.json").read_text())
    assert out["plan"]["steps"] == 2 and not math.isnan(out["mean_bpb_after"])
