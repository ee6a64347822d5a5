"""unitune.losses against plain-Python loops over anchors and pairs, and the identities of docs/losses.md."""

import math

import pytest
import torch

from unitune.losses import (MINING_MODES, LearnableScale, MiningSchedule, hinge_mean_loss, scheduled_loss,
                            triplet_hn_loss, unified_loss, vlc_loss)

# ---------------------------------------------------------------- loop references


def _anchors(sim, row_ids, col_ids):
    """Yield (direction, positives, negatives) for every anchor: rows, then columns."""
    s = sim.tolist()
    n_v, n_t = len(s), len(s[0])
    row_ids = list(range(n_v)) if row_ids is None else list(row_ids)
    col_ids = list(range(n_t)) if col_ids is None else list(col_ids)
    for i in range(n_v):
        yield ("i2t", [s[i][j] for j in range(n_t) if row_ids[i] == col_ids[j]],
               [s[i][j] for j in range(n_t) if row_ids[i] != col_ids[j]])
    for j in range(n_t):
        yield ("t2i", [s[i][j] for i in range(n_v) if row_ids[i] == col_ids[j]],
               [s[i][j] for i in range(n_v) if row_ids[i] != col_ids[j]])


def _directions(per_anchor):
    """{"i2t": mean, "t2i": mean, "loss": their mean} from [(direction, value)]."""
    out = {}
    for d in ("i2t", "t2i"):
        values = [v for dd, v in per_anchor if dd == d]
        out[d] = sum(values) / len(values)
    out["loss"] = (out["i2t"] + out["t2i"]) / 2
    return out


def loop_unified(sim, *, margin, gamma, mining="all", topk=None, row_ids=None, col_ids=None,
                 scale_by_gamma=False):
    """log(1 + Σ_p Σ_n exp(γ(s_n − s_p + m))) per anchor, the negatives cut to the mined ones."""
    per_anchor = []
    for d, positives, negatives in _anchors(sim, row_ids, col_ids):
        negatives = sorted(negatives, reverse=True)
        if mining == "hardest":
            negatives = negatives[:1]
        elif mining == "topk":
            negatives = negatives[:topk]
        total = sum(math.exp(gamma * (sn - sp + margin)) for sp in positives for sn in negatives)
        value = math.log1p(total)
        per_anchor.append((d, value / gamma if scale_by_gamma else value))
    return _directions(per_anchor)


def loop_vlc(sim, *, temperature, row_ids=None, col_ids=None):
    """−log(e^{s_p/τ} / (e^{s_p/τ} + Σ_n e^{s_n/τ})), mean over an anchor's positives."""
    per_anchor = []
    for d, positives, negatives in _anchors(sim, row_ids, col_ids):
        terms = []
        for sp in positives:
            denominator = math.exp(sp / temperature) + sum(math.exp(sn / temperature) for sn in negatives)
            terms.append(-math.log(math.exp(sp / temperature) / denominator))
        per_anchor.append((d, sum(terms) / len(terms)))
    return _directions(per_anchor)


def loop_triplet(sim, *, margin, row_ids=None, col_ids=None):
    """max over negatives of max(0, m + s_n − s_p), s_p the hardest (smallest) positive."""
    per_anchor = []
    for d, positives, negatives in _anchors(sim, row_ids, col_ids):
        per_anchor.append((d, max(max(0.0, margin + sn - min(positives)) for sn in negatives)))
    return _directions(per_anchor)


def loop_hinge_mean(sim, *, margin, row_ids=None, col_ids=None):
    """VSE∞'s warm-up: the mean over negatives of max(0, m + s_n − s_p), s_p the hardest positive."""
    per_anchor = []
    for d, positives, negatives in _anchors(sim, row_ids, col_ids):
        total = 0.0
        for sn in negatives:
            total += max(0.0, margin + sn - min(positives))
        per_anchor.append((d, total / len(negatives)))
    return _directions(per_anchor)


def loop_diagnostics(sim, *, margin, row_ids=None, col_ids=None):
    positive_pairs, hardest, violations = [], {"i2t": [], "t2i": []}, {"i2t": [], "t2i": []}
    for d, positives, negatives in _anchors(sim, row_ids, col_ids):
        if d == "i2t":
            positive_pairs += positives
        hardest[d].append(max(negatives))
        violations[d].append(1.0 if max(negatives) + margin > min(positives) else 0.0)

    def mean(v):
        return sum(v) / len(v)

    return {"pos_sim": mean(positive_pairs),
            "hard_neg_sim": (mean(hardest["i2t"]) + mean(hardest["t2i"])) / 2,
            "violation_frac": (mean(violations["i2t"]) + mean(violations["t2i"])) / 2}


# ---------------------------------------------------------------- cases

def _sim(n_v, n_t, seed, dtype=torch.float64):
    """Cosine similarities of random embeddings, [n_v, n_t]."""
    g = torch.Generator().manual_seed(seed)
    a = torch.nn.functional.normalize(torch.randn(n_v, 16, generator=g, dtype=torch.float64), dim=1)
    b = torch.nn.functional.normalize(torch.randn(n_t, 16, generator=g, dtype=torch.float64), dim=1)
    return (a @ b.t()).to(dtype)


# name -> (n_v, n_t, row_ids, col_ids); together they reach every code path of unified.py.
ID_CASES = {
    "diagonal": (7, 7, None, None),
    "unique_ids_aligned": (7, 7, [10, 11, 12, 13, 14, 15, 16], [10, 11, 12, 13, 14, 15, 16]),
    "unique_ids_shuffled": (7, 7, [3, 0, 6, 1, 5, 2, 4], [0, 1, 2, 3, 4, 5, 6]),
    "repeated_square": (8, 8, [0, 0, 1, 2, 2, 2, 3, 4], [0, 0, 1, 2, 2, 2, 3, 4]),
    "repeated_rectangular": (4, 10, [7, 8, 9, 5], [7, 7, 8, 9, 9, 9, 5, 8, 7, 5]),
}


def _check_close(out, expected, tol=1e-10):
    for key, value in expected.items():
        assert out[key].item() == pytest.approx(value, abs=tol, rel=tol), key


@pytest.mark.parametrize("case", ID_CASES)
@pytest.mark.parametrize("mining", MINING_MODES)
@pytest.mark.parametrize("scale_by_gamma", [False, True])
def test_unified_matches_loop(case, mining, scale_by_gamma):
    n_v, n_t, row_ids, col_ids = ID_CASES[case]
    sim = _sim(n_v, n_t, seed=list(ID_CASES).index(case))
    kwargs = dict(margin=0.2, gamma=7.0, mining=mining, topk=2, row_ids=row_ids, col_ids=col_ids,
                  scale_by_gamma=scale_by_gamma)
    out = unified_loss(sim, **kwargs)
    _check_close(out, loop_unified(sim, **kwargs))
    _check_close(out, loop_diagnostics(sim, margin=0.2, row_ids=row_ids, col_ids=col_ids))


@pytest.mark.parametrize("mining", MINING_MODES)
def test_unified_non_contiguous_sim_and_tensor_hyperparameters(mining):
    sim = _sim(6, 6, seed=3).t()  # a transposed view
    assert not sim.is_contiguous()
    out = unified_loss(sim, margin=torch.tensor(0.1, dtype=torch.float64), gamma=torch.tensor(12.0),
                       mining=mining, topk=3)
    _check_close(out, loop_unified(sim, margin=0.1, gamma=12.0, mining=mining, topk=3), tol=1e-6)


@pytest.mark.parametrize("case", ID_CASES)
def test_reference_losses_match_loops(case):
    n_v, n_t, row_ids, col_ids = ID_CASES[case]
    sim = _sim(n_v, n_t, seed=5)
    ids = dict(row_ids=row_ids, col_ids=col_ids)
    _check_close(vlc_loss(sim, temperature=0.07, **ids), loop_vlc(sim, temperature=0.07, **ids))
    _check_close(vlc_loss(sim, temperature=0.07, **ids), loop_diagnostics(sim, margin=0.0, **ids))
    _check_close(triplet_hn_loss(sim, margin=0.3, **ids), loop_triplet(sim, margin=0.3, **ids))
    _check_close(triplet_hn_loss(sim, margin=0.3, **ids), loop_diagnostics(sim, margin=0.3, **ids))


# ---------------------------------------------------------- identities of docs/losses.md

@pytest.mark.parametrize("case", ["diagonal", "unique_ids_aligned", "unique_ids_shuffled"])
@pytest.mark.parametrize("tau", [0.01, 0.07, 1.0])
def test_unified_is_vlc_with_one_positive_per_anchor(case, tau):
    n_v, n_t, row_ids, col_ids = ID_CASES[case]
    sim = _sim(n_v, n_t, seed=11)
    ids = dict(row_ids=row_ids, col_ids=col_ids)
    out = unified_loss(sim, margin=0.0, gamma=1 / tau, **ids)
    ref = vlc_loss(sim, temperature=tau, **ids)
    for key in ("loss", "i2t", "t2i"):
        assert abs(out[key].item() - ref[key].item()) <= 1e-10, key


@pytest.mark.parametrize("tau", [0.01, 0.07, 1.0])
def test_unified_is_vlc_with_repeated_ids_where_anchors_have_one_positive(tau):
    # Captions of the same image repeat the image's id: each caption (t2i anchor) has one
    # positive and its equality with CLIP's cross-entropy is exact; an image (i2t anchor)
    # has several, where the unified loss pools them by a soft-min
    # (LSE_p(−γ s_p)) and is >= the per-positive cross-entropy.
    n_v, n_t, row_ids, col_ids = ID_CASES["repeated_rectangular"]
    sim = _sim(n_v, n_t, seed=13)
    ids = dict(row_ids=row_ids, col_ids=col_ids)
    out = unified_loss(sim, margin=0.0, gamma=1 / tau, **ids)
    ref = vlc_loss(sim, temperature=tau, **ids)
    assert abs(out["t2i"].item() - ref["t2i"].item()) <= 1e-10
    assert out["i2t"].item() >= ref["i2t"].item() - 1e-12


@pytest.mark.parametrize("gamma", [10.0, 100.0, 1000.0])
@pytest.mark.parametrize("mining", MINING_MODES)
@pytest.mark.parametrize("n", [8, 64])
def test_scaled_unified_approaches_triplet_hn(gamma, mining, n):
    sim = _sim(n, n, seed=n)
    out = unified_loss(sim, margin=0.2, gamma=gamma, mining=mining, topk=3, scale_by_gamma=True)
    hinge = loop_triplet(sim, margin=0.2)
    assert triplet_hn_loss(sim, margin=0.2)["loss"].item() == pytest.approx(hinge["loss"], abs=1e-12)
    gap = out["loss"].item() - hinge["loss"]
    assert -1e-12 <= gap <= math.log(n) / gamma


@pytest.mark.parametrize("gamma", [10.0, 100.0, 1000.0])
def test_scaled_unified_approaches_triplet_hn_with_repeated_ids(gamma):
    # Per anchor the double sum has |P|·|N| terms, so the gap is at most log(1 + |P||N|)/γ.
    n_v, n_t, row_ids, col_ids = ID_CASES["repeated_square"]
    sim = _sim(n_v, n_t, seed=17)
    ids = dict(row_ids=row_ids, col_ids=col_ids)
    out = unified_loss(sim, margin=0.2, gamma=gamma, scale_by_gamma=True, **ids)
    hinge = loop_triplet(sim, margin=0.2, **ids)
    worst = max(len(p) * len(n) for _, p, n in _anchors(sim, row_ids, col_ids))
    gap = out["loss"].item() - hinge["loss"]
    assert -1e-12 <= gap <= math.log1p(worst) / gamma


# ---------------------------------------------------------------- same-id pairs are never negatives

@pytest.mark.parametrize("mining", MINING_MODES)
@pytest.mark.parametrize("case", ["repeated_square", "repeated_rectangular"])
def test_same_id_pairs_are_never_negatives(mining, case):
    n_v, n_t, row_ids, col_ids = ID_CASES[case]
    sim = _sim(n_v, n_t, seed=19)
    # Make an off-diagonal same-id pair the most similar entry of the whole matrix: as a
    # negative it would be every miner's hardest choice.
    i, j = next((i, j) for i in range(n_v) for j in range(n_t) if row_ids[i] == col_ids[j] and i != j)
    sim[i, j] = 0.999
    sim.requires_grad_(True)
    kwargs = dict(margin=0.2, gamma=9.0, mining=mining, topk=2, row_ids=row_ids, col_ids=col_ids)
    out = unified_loss(sim, **kwargs)
    _check_close(out, loop_unified(sim.detach(), **kwargs))
    _check_close(out, loop_diagnostics(sim.detach(), margin=0.2, row_ids=row_ids, col_ids=col_ids))
    out["loss"].backward()
    positive = torch.tensor(row_ids)[:, None] == torch.tensor(col_ids)[None, :]
    # Raising a positive's similarity never raises the loss; raising a negative's never lowers it.
    assert (sim.grad[positive] <= 0).all()
    assert (sim.grad[~positive] >= 0).all()
    assert sim.grad[i, j] < 0


# ---------------------------------------------------------------- gradients and precision

@pytest.mark.parametrize("mining", MINING_MODES)
@pytest.mark.parametrize("case", ["diagonal", "repeated_square", "repeated_rectangular"])
@pytest.mark.parametrize("scale_by_gamma", [False, True])
def test_gradcheck(mining, case, scale_by_gamma):
    n_v, n_t, row_ids, col_ids = ID_CASES[case]
    sim = _sim(n_v, n_t, seed=23).requires_grad_(True)
    gamma = torch.tensor(6.0, dtype=torch.float64, requires_grad=True)
    margin = torch.tensor(0.15, dtype=torch.float64, requires_grad=True)

    def loss(s, g, m):
        return unified_loss(s, margin=m, gamma=g, mining=mining, topk=2, row_ids=row_ids, col_ids=col_ids,
                            scale_by_gamma=scale_by_gamma)["loss"]

    assert torch.autograd.gradcheck(loss, (sim, gamma, margin))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mining", MINING_MODES)
@pytest.mark.parametrize("case", ["diagonal", "repeated_square"])
def test_large_gamma_is_finite_in_low_precision(dtype, mining, case):
    n_v, n_t, row_ids, col_ids = ID_CASES[case]
    sim = _sim(n_v, n_t, seed=29, dtype=dtype).requires_grad_(True)
    gamma = torch.tensor(1000.0, requires_grad=True)
    for scale_by_gamma in (False, True):
        out = unified_loss(sim, margin=0.2, gamma=gamma, mining=mining, topk=2, row_ids=row_ids,
                           col_ids=col_ids, scale_by_gamma=scale_by_gamma)
        assert out["loss"].dtype == torch.float32
        s_grad, g_grad = torch.autograd.grad(out["loss"], (sim, gamma))
        assert s_grad.dtype == dtype
        assert all(torch.isfinite(v).all() for v in out.values())
        assert torch.isfinite(s_grad).all() and torch.isfinite(g_grad)


def test_diagnostics_are_detached():
    sim = _sim(5, 5, seed=31).requires_grad_(True)
    for mining in MINING_MODES:
        out = unified_loss(sim, margin=0.2, gamma=10.0, mining=mining, topk=2)
        assert out["loss"].requires_grad
        assert not any(out[k].requires_grad for k in ("pos_sim", "hard_neg_sim", "violation_frac"))


# ---------------------------------------------------------------- bad input

GOOD = dict(margin=0.2, gamma=10.0)


@pytest.mark.parametrize("sim, kwargs, name", [
    (torch.zeros(5), GOOD, "sim"),
    (torch.zeros(2, 3, 3), GOOD, "sim"),
    (torch.zeros(3, 4), GOOD, "sim"),
    (torch.zeros(4, 4, dtype=torch.long), GOOD, "sim"),
    (torch.tensor([[0.1, float("nan")], [0.2, 0.3]]), GOOD, "sim"),
    (torch.tensor([[0.1, float("inf")], [0.2, 0.3]]), GOOD, "sim"),
    (torch.zeros(1, 1), GOOD, "sim"),
    (torch.zeros(4, 4), dict(GOOD, row_ids=[0, 1, 2]), "col_ids"),
    (torch.zeros(4, 4), dict(GOOD, row_ids=[0, 1, 2], col_ids=[0, 1, 2, 3]), "row_ids"),
    (torch.zeros(4, 4), dict(GOOD, row_ids=[0, 1, 2, 3], col_ids=[0, 1, 2]), "col_ids"),
    (torch.zeros(4, 4), dict(GOOD, row_ids=[0.0, 1.0, 2.0, 3.0], col_ids=[0, 1, 2, 3]), "row_ids"),
    (torch.zeros(3, 3), dict(GOOD, row_ids=[0, 1, 9], col_ids=[0, 1, 1]), "row_ids"),  # an image without caption
    (torch.zeros(3, 4), dict(GOOD, row_ids=[0, 1, 2], col_ids=[0, 1, 2, 9]), "col_ids"),  # a caption without image
    (torch.zeros(3, 3), dict(GOOD, row_ids=[0, 0, 0], col_ids=[0, 0, 0]), "row_ids"),  # no negative at all
    (torch.zeros(4, 4), dict(GOOD, gamma=0.0), "gamma"),
    (torch.zeros(4, 4), dict(GOOD, gamma=-1.0), "gamma"),
    (torch.zeros(4, 4), dict(GOOD, gamma=torch.tensor(0.0)), "gamma"),
    (torch.zeros(4, 4), dict(GOOD, gamma=float("inf")), "gamma"),
    (torch.zeros(4, 4), dict(GOOD, margin=float("nan")), "margin"),
    (torch.zeros(4, 4), dict(GOOD, mining="semi-hard"), "mining"),
    (torch.zeros(4, 4), dict(GOOD, mining="topk"), "topk"),
    (torch.zeros(4, 4), dict(GOOD, mining="topk", topk=0), "topk"),
    (torch.zeros(4, 4), dict(GOOD, mining="topk", topk=3), "topk"),  # 3 negatives per anchor
    (torch.zeros(4, 4), dict(GOOD, mining="topk", topk=2.0), "topk"),
    # the fewest negatives decide: column 0 has the 3 rows of id 0 as positives, 2 negatives
    (torch.zeros(5, 5), dict(GOOD, mining="topk", topk=2, row_ids=[0, 0, 0, 1, 2], col_ids=[0, 1, 2, 0, 1]),
     "topk"),
])
def test_bad_input_raises_value_error_naming_the_argument(sim, kwargs, name):
    with pytest.raises(ValueError, match=name):
        unified_loss(sim, **kwargs)


def test_topk_is_checked_against_the_anchor_with_fewest_negatives():
    ids = [0, 0, 0, 1, 2, 3]  # the three id-0 anchors have 3 negatives, the others 5
    sim = _sim(6, 6, seed=37)
    unified_loss(sim, margin=0.2, gamma=5.0, mining="topk", topk=2, row_ids=ids, col_ids=ids)
    with pytest.raises(ValueError, match="topk"):
        unified_loss(sim, margin=0.2, gamma=5.0, mining="topk", topk=3, row_ids=ids, col_ids=ids)


def test_reference_losses_reject_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        vlc_loss(torch.zeros(3, 3), temperature=0.0)
    with pytest.raises(ValueError, match="sim"):
        vlc_loss(torch.zeros(3), temperature=0.1)
    with pytest.raises(ValueError, match="col_ids"):
        triplet_hn_loss(torch.zeros(3, 4), margin=0.2, row_ids=[0, 1, 2], col_ids=[0, 1, 2, 7])


# ---------------------------------------------------------------- LearnableScale, MiningSchedule

def test_learnable_scale_value_gradient_and_clamp():
    scale = LearnableScale(20.0)
    gamma = scale()
    assert gamma.dim() == 0 and gamma.item() == pytest.approx(20.0)
    sim = _sim(5, 5, seed=41, dtype=torch.float32)
    unified_loss(sim, margin=0.2, gamma=scale(), mining="hardest")["loss"].backward()
    assert scale.log_gamma.grad is not None and torch.isfinite(scale.log_gamma.grad)

    with torch.no_grad():
        scale.log_gamma.fill_(math.log(1000.0))  # e.g. an optimizer step past the bound
    assert scale().item() == pytest.approx(100.0)
    assert scale.log_gamma.item() == pytest.approx(math.log(100.0))
    scale.log_gamma.grad = None
    scale().backward()  # at the bound the gradient still flows (d γ / d log γ = γ)
    assert scale.log_gamma.grad.item() == pytest.approx(100.0)

    assert LearnableScale(5.0, max_gamma=4.0 + 1.0)().item() == pytest.approx(5.0)
    for bad in (0.0, -1.0, 101.0):
        with pytest.raises(ValueError, match="init_gamma"):
            LearnableScale(bad)
    with pytest.raises(ValueError, match="max_gamma"):
        LearnableScale(1.0, max_gamma=0.0)


def test_mining_schedule_is_one_based():
    schedule = MiningSchedule("hardest", warmup_epochs=2)
    assert [schedule.at(e) for e in (1, 2, 3, 4)] == ["all", "all", "hardest", "hardest"]
    assert MiningSchedule("topk").at(1) == "topk"
    with pytest.raises(ValueError, match="epoch"):
        schedule.at(0)
    with pytest.raises(ValueError, match="mining"):
        MiningSchedule("semi-hard")
    with pytest.raises(ValueError, match="warmup_epochs"):
        MiningSchedule("hardest", warmup_epochs=-1)


# ---------------------------------------------------------------- Triplet-HN warm-up (VSE∞)


@pytest.mark.parametrize("case", ID_CASES)
def test_hinge_mean_matches_loop(case):
    n_v, n_t, row_ids, col_ids = ID_CASES[case]
    sim = _sim(n_v, n_t, seed=11)
    ids = {"row_ids": row_ids, "col_ids": col_ids}
    out = hinge_mean_loss(sim, margin=0.3, **ids)
    _check_close(out, loop_hinge_mean(sim, margin=0.3, **ids))
    _check_close(out, loop_diagnostics(sim, margin=0.3, **ids))


@pytest.mark.parametrize("case", ["diagonal", "repeated_square", "repeated_rectangular"])
def test_triplet_hn_warmup_is_the_mean_hinge_then_the_hardest(case):
    """The Triplet-HN family (hardest, γ = 1000, 1/γ) with VSE∞'s warm-up: the warm-up epochs
    train the mean-over-negatives hinge exactly, later epochs the max-violation hinge."""
    n_v, n_t, row_ids, col_ids = ID_CASES[case]
    sim = _sim(n_v, n_t, seed=12)
    ids = {"row_ids": row_ids, "col_ids": col_ids}
    family = {"margin": 0.2, "gamma": 1000.0, "scale_by_gamma": True, **ids}
    schedule = MiningSchedule("hardest", warmup_epochs=2, warmup_mining="hinge_mean")
    assert [schedule.at(e) for e in (1, 2, 3)] == ["hinge_mean", "hinge_mean", "hardest"]
    for epoch in (1, 2):
        _check_close(scheduled_loss(sim, schedule.at(epoch), **family), loop_hinge_mean(sim, margin=0.2, **ids))
    after = scheduled_loss(sim, schedule.at(3), **family)
    bound = math.log(max(n_v, n_t)) / 1000.0
    assert abs(after["loss"].item() - loop_triplet(sim, margin=0.2, **ids)["loss"]) <= bound
    assert abs(after["loss"].item() - triplet_hn_loss(sim, margin=0.2, **ids)["loss"].item()) <= bound


def test_old_all_warmup_was_the_hardest_negative_at_large_gamma():
    """Why the old warm-up was a dead dimension: mining "all" at γ = 1000 with 1/γ is within
    log(N)/γ of the hardest negative's hinge, while the mean hinge differs from it."""
    sim = _sim(64, 64, seed=13)
    hardest = triplet_hn_loss(sim, margin=0.2)["loss"].item()
    old = unified_loss(sim, margin=0.2, gamma=1000.0, mining="all", scale_by_gamma=True)["loss"].item()
    assert abs(old - hardest) <= math.log(63) / 1000.0
    assert hardest - hinge_mean_loss(sim, margin=0.2)["loss"].item() > 0.1


def test_hinge_mean_gradcheck_and_positives_get_no_cost():
    n_v, n_t, row_ids, col_ids = ID_CASES["repeated_rectangular"]
    sim = _sim(n_v, n_t, seed=14).requires_grad_(True)
    margin = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda s, m: hinge_mean_loss(s, margin=m, row_ids=row_ids, col_ids=col_ids)["loss"], (sim, margin))
    # A batch where every negative sits far below its positive: zero loss and zero gradient.
    easy = (torch.eye(5, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    out = hinge_mean_loss(easy, margin=0.2)
    out["loss"].backward()
    assert out["loss"].item() == 0.0 and easy.grad.abs().max().item() == 0.0


def test_scheduled_loss_dispatches_and_schedule_checks_the_warmup_mode():
    sim = _sim(6, 6, seed=15)
    for mining in MINING_MODES:
        got = scheduled_loss(sim, mining, margin=0.1, gamma=20.0, topk=2)["loss"].item()
        assert got == unified_loss(sim, margin=0.1, gamma=20.0, mining=mining, topk=2)["loss"].item()
    assert MiningSchedule("hardest", 1).at(1) == "all"   # the default warm-up is unchanged
    with pytest.raises(ValueError, match="warmup_mining"):
        MiningSchedule("hardest", 1, warmup_mining="semi-hard")
    with pytest.raises(ValueError, match="margin"):
        hinge_mean_loss(sim, margin=float("nan"))
