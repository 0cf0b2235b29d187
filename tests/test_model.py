"""The body is vocabulary-agnostic and causal; embeddings are tied to the head."""

import torch

from dept.config import ModelConfig
from dept.model import Body, LanguageModel, SourceEmbedding

CFG = ModelConfig(d_model=32, n_layers=2, n_heads=4, max_seq_len=32)


def make(vocab, cfg=CFG, seed=0):
    g = torch.Generator().manual_seed(seed)
    body = Body(cfg)
    body.reset_parameters(g)
    emb = SourceEmbedding(vocab, cfg)
    emb.reset_parameters(g)
    return LanguageModel(body, emb)


def test_one_body_serves_vocabularies_of_any_size():
    lm = make(50)
    other = SourceEmbedding(777, CFG)
    other.reset_parameters(torch.Generator().manual_seed(1))
    lm2 = LanguageModel(lm.body, other)
    assert lm(torch.randint(0, 50, (2, 9))).shape == (2, 9, 50)
    assert lm2(torch.randint(0, 777, (2, 9))).shape == (2, 9, 777)
    assert not any("tokens" in k for k in lm.body.state_dict())


def test_attention_is_causal():
    for positions in ("rope", "learned"):
        lm = make(40, ModelConfig(d_model=32, n_layers=2, n_heads=4, max_seq_len=32, positions=positions))
        x = torch.randint(0, 40, (1, 12))
        y = x.clone()
        y[0, 8:] = (y[0, 8:] + 1) % 40
        assert torch.allclose(lm(x)[0, :8], lm(y)[0, :8], atol=1e-6)
        assert not torch.allclose(lm(x)[0, 8:], lm(y)[0, 8:])


def test_head_is_tied_to_the_token_table():
    lm = make(20)
    h = torch.randn(1, 3, CFG.d_model)
    assert torch.allclose(lm.embedding.logits(h), h @ lm.embedding.tokens.weight.t())
    assert sum(p.numel() for p in lm.embedding.parameters()) == 20 * CFG.d_model


def test_body_state_holds_parameters_only():
    body = make(10).body
    assert set(body.state_dict()) == {n for n, _ in body.named_parameters()}


def test_learned_positions_live_in_the_embedding():
    cfg = ModelConfig(d_model=16, n_layers=1, n_heads=2, max_seq_len=8, positions="learned")
    lm = make(10, cfg)
    assert lm.embedding.positions.weight.shape == (8, 16)
    assert lm.body.rope_cos is None


def test_token_cross_entropy_matches_torch_in_value_and_gradient():
    import torch.nn.functional as F

    from dept.model.lm import token_cross_entropy

    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, requires_grad=True)
    targets = torch.randint(0, 11, (3, 5))
    ours = token_cross_entropy(logits, targets)
    ref = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(3, 5)
    assert torch.allclose(ours, ref, atol=1e-6)
    weights = torch.rand(3, 5)
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), logits)
    (g_ref,) = torch.autograd.grad((ref * weights).sum(), logits)
    assert torch.allclose(g_ours, g_ref, atol=1e-6)
