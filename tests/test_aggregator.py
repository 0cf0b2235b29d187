"""The aggregator's rules against hand-computed values."""

import pytest
import torch

from dept.algorithm.aggregator import Aggregator
from dept.algorithm.types import Mixture, SharedState, Source, TableRows, WholeTable, WorkerUpdate
from dept.algorithm.variants import spec_of
from dept.config import OuterOptConfig, Variant


def update(source, body, tokens, emb=None, ids=None):
    if emb is None:
        payload = None
    elif ids is None:
        payload = WholeTable({"tokens": torch.tensor(emb)})
    else:
        payload = TableRows({"tokens": torch.tensor(emb)}, torch.tensor(ids, dtype=torch.int32))
    return WorkerUpdate(participant=Source(source, 0), round=0, body={"w": torch.tensor(body)}, tokens=tokens,
                        embedding=payload)


def test_fedavg_body_is_token_weighted_mean():
    shared = SharedState(body={"w": torch.tensor([0.0, 0.0])})
    agg = Aggregator(spec_of(Variant.SPEC), OuterOptConfig(kind="fedavg"))
    agg.apply(shared, [update("a", [1.0, 2.0], 100), update("b", [4.0, -1.0], 300)])
    # (100·[1,2] + 300·[4,-1]) / 400
    assert torch.allclose(shared.body["w"], torch.tensor([3.25, -0.25]))


def test_uniform_weights_ignore_tokens():
    shared = SharedState(body={"w": torch.tensor([0.0])})
    Aggregator(spec_of(Variant.SPEC), OuterOptConfig(), by_tokens=False).apply(
        shared, [update("a", [1.0], 1), update("b", [3.0], 1000)])
    assert shared.body["w"].item() == pytest.approx(2.0)


def test_single_update_fedavg_is_exact():
    body = torch.randn(50)
    shared = SharedState(body={"w": torch.zeros(50)})
    Aggregator(spec_of(Variant.SPEC), OuterOptConfig()).apply(shared, [update("a", body.tolist(), 7)])
    assert torch.equal(shared.body["w"], body)


@pytest.mark.parametrize("variant", [Variant.STD, Variant.ACT])
def test_baselines_adopt_their_model_whatever_the_outer_optimizer(variant):
    body, table = torch.randn(5), torch.randn(3, 2)
    shared = SharedState(body={"w": torch.zeros(5)}, embedding={"tokens": torch.zeros(3, 2)})
    agg = Aggregator(spec_of(variant), OuterOptConfig(kind="nesterov", lr=0.7, momentum=0.9))
    mixture = Mixture(("a", "b"))
    agg.apply(shared, [WorkerUpdate(mixture, 0, {"w": body.clone()}, 7, embedding=WholeTable({"tokens": table}))])
    assert torch.equal(shared.body["w"], body) and torch.equal(shared.embedding["tokens"], table)
    assert not shared.momentum  # no outer optimizer state at all


def test_a_payload_of_the_wrong_kind_is_refused():
    shared = SharedState(body={"w": torch.zeros(1)}, embedding={"tokens": torch.zeros(3, 2)})
    glob_update = update("a", [0.0], 1, emb=[[1.0, 1.0]] * 3)
    with pytest.raises(ValueError, match="TableRows"):
        Aggregator(spec_of(Variant.TRIM), OuterOptConfig()).apply(shared, [glob_update])
    with pytest.raises(ValueError, match="none"):
        Aggregator(spec_of(Variant.SPEC), OuterOptConfig()).apply(shared, [glob_update])


def test_nesterov_outer_step_matches_hand_computation():
    shared = SharedState(body={"w": torch.tensor([1.0])})
    agg = Aggregator(spec_of(Variant.SPEC), OuterOptConfig(kind="nesterov", lr=0.5, momentum=0.9))
    agg.apply(shared, [update("a", [0.0], 1)])
    # delta = 1 - 0 = 1; buf = 1; step = 1 + 0.9·1 = 1.9; w = 1 - 0.5·1.9 = 0.05
    assert shared.body["w"].item() == pytest.approx(0.05)
    agg.apply(shared, [update("a", [0.0], 1)])
    # delta = 0.05; buf = 0.9 + 0.05 = 0.95; step = 0.05 + 0.855 = 0.905; w = 0.05 - 0.4525
    assert shared.body["w"].item() == pytest.approx(0.05 - 0.5 * 0.905)


def test_nesterov_matches_torch_sgd():
    torch.manual_seed(0)
    theta = torch.randn(5)
    targets = [torch.randn(5) for _ in range(3)]
    shared = SharedState(body={"w": theta.clone()})
    agg = Aggregator(spec_of(Variant.SPEC), OuterOptConfig(kind="nesterov", lr=0.7, momentum=0.9))
    p = torch.nn.Parameter(theta.clone())
    sgd = torch.optim.SGD([p], lr=0.7, momentum=0.9, nesterov=True)
    for t in targets:
        agg.apply(shared, [update("a", t.tolist(), 1)])
        p.grad = p.detach() - t
        sgd.step()
    assert torch.allclose(shared.body["w"], p.detach(), atol=1e-6)


def test_glob_averages_the_whole_embedding():
    shared = SharedState(body={"w": torch.zeros(1)}, embedding={"tokens": torch.zeros(3, 2)})
    Aggregator(spec_of(Variant.GLOB), OuterOptConfig()).apply(shared, [
        update("a", [0.0], 1, emb=[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]),
        update("b", [0.0], 3, emb=[[5.0, 5.0], [6.0, 6.0], [7.0, 7.0]])])
    assert torch.allclose(shared.embedding["tokens"][:, 0], torch.tensor([4.0, 5.0, 6.0]))


def test_trim_rows_average_over_holders_and_untouched_rows_stay():
    table = torch.arange(10.0).view(5, 2)
    shared = SharedState(body={"w": torch.zeros(1)}, embedding={"tokens": table.clone()})
    # a holds rows 0, 2 (weight 1); b holds rows 2, 3 (weight 3). Rows 1 and 4: no holder.
    Aggregator(spec_of(Variant.TRIM), OuterOptConfig()).apply(shared, [
        update("a", [0.0], 1, emb=[[100.0, 100.0], [10.0, 10.0]], ids=[0, 2]),
        update("b", [0.0], 3, emb=[[30.0, 30.0], [40.0, 40.0]], ids=[2, 3])])
    got = shared.embedding["tokens"]
    assert torch.equal(got[0], torch.tensor([100.0, 100.0]))  # only a holds it: a's row, not pulled to 0
    assert torch.allclose(got[2], torch.tensor([(1 * 10.0 + 3 * 30.0) / 4] * 2))
    assert torch.equal(got[3], torch.tensor([40.0, 40.0]))
    assert torch.equal(got[1], table[1]) and torch.equal(got[4], table[4])


def test_trim_nesterov_leaves_unheld_rows_and_momentum_untouched():
    table = torch.ones(4, 2)
    shared = SharedState(body={"w": torch.zeros(1)}, embedding={"tokens": table.clone()})
    agg = Aggregator(spec_of(Variant.TRIM), OuterOptConfig(kind="nesterov", lr=1.0, momentum=0.5))
    agg.apply(shared, [update("a", [0.0], 1, emb=[[0.0, 0.0]], ids=[1])])
    got = shared.embedding["tokens"]
    assert torch.equal(got[[0, 2, 3]], table[[0, 2, 3]])
    assert got[1, 0].item() == pytest.approx(1 - (1 + 0.5 * 1))
    assert torch.equal(shared.momentum["embedding.tokens"][[0, 2, 3]], torch.zeros(3, 2))


def test_mismatched_body_keys_are_refused():
    shared = SharedState(body={"w": torch.zeros(1)})
    bad = WorkerUpdate(Source("a", 0), 0, {"v": torch.zeros(1)}, 1)
    with pytest.raises(ValueError, match="do not match"):
        Aggregator(spec_of(Variant.SPEC), OuterOptConfig()).apply(shared, [bad])
