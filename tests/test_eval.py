"""Retrieval metrics against a brute-force reference that sorts every row and column."""

import json
import math
import statistics

import pytest
import torch

from unitune.eval import (
    METRIC_KEYS,
    coco_protocol,
    metrics_from_ranks,
    retrieval_metrics,
    retrieval_metrics_from_embeddings,
    retrieval_ranks,
    retrieval_ranks_from_embeddings,
)

CHUNK_SIZES = (1, 3, 7, 16, 1000)  # 7 and 16 do not divide the item counts used below


# ---------------------------------------------------------------- reference (plain Python)

def reference_ranks(sim, caption_to_item, item_groups=None):
    """Sort every row/column in Python; rank = 1 + position of the first ground truth.

    Ties are broken in favour of ground truths (the optimistic rule)."""
    rows = sim.tolist()
    c2i = [int(i) for i in caption_to_item]
    groups = list(range(len(rows))) if item_groups is None else [int(g) for g in item_groups]
    num_items, num_captions = len(rows), len(c2i)

    def first_hit(scores, is_gt):
        order = sorted(range(len(scores)), key=lambda c: (-scores[c], not is_gt(c)))
        for position, candidate in enumerate(order):
            if is_gt(candidate):
                return position + 1
        raise AssertionError("no ground truth")

    item_ranks = [
        first_hit(rows[i], lambda j, i=i: groups[c2i[j]] == groups[i]) for i in range(num_items)
    ]
    caption_ranks = [
        first_hit([rows[i][j] for i in range(num_items)], lambda i, j=j: groups[i] == groups[c2i[j]])
        for j in range(num_captions)
    ]
    return item_ranks, caption_ranks


def reference_metrics(item_ranks, caption_ranks):
    out = {}
    for d, ranks in (("i2t", item_ranks), ("t2i", caption_ranks)):
        for k in (1, 5, 10):
            out[f"r{k}_{d}"] = 100.0 * sum(1 for r in ranks if r <= k) / len(ranks)
    out["rsum"] = sum(out[f"r{k}_{d}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    for d, ranks in (("i2t", item_ranks), ("t2i", caption_ranks)):
        out[f"medr_{d}"] = float(math.floor(statistics.median(ranks)))
        out[f"meanr_{d}"] = sum(ranks) / len(ranks)
    return out


def assert_metrics_close(got, want):
    assert list(got) == list(METRIC_KEYS)
    for key in METRIC_KEYS:
        assert isinstance(got[key], float), key
        assert got[key] == pytest.approx(want[key], abs=1e-9), key


# ---------------------------------------------------------------- data

def multi_caption(num_items, per_item, generator, shuffle=True):
    """caption_to_item with ``per_item`` captions per item, in shuffled order."""
    c2i = torch.arange(num_items).repeat_interleave(per_item)
    if shuffle:
        c2i = c2i[torch.randperm(c2i.numel(), generator=generator)]
    return c2i


def shuffled_groups(num_items, generator):
    """Groups of 1 to 4 items, items of a group scattered over the index range."""
    sizes, total = [], 0
    while total < num_items:
        sizes.append(min(int(torch.randint(1, 5, (1,), generator=generator)), num_items - total))
        total += sizes[-1]
    groups = torch.cat([torch.full((s,), g) for g, s in enumerate(sizes)])
    return groups[torch.randperm(num_items, generator=generator)] * 7  # non-dense group labels


# ---------------------------------------------------------------- against the reference

@pytest.mark.parametrize("use_groups", [False, True])
@pytest.mark.parametrize("quantised", [False, True])
def test_ranks_and_metrics_match_brute_force(use_groups, quantised):
    g = torch.Generator().manual_seed(1 + use_groups + 2 * quantised)
    num_items = 37
    c2i = multi_caption(num_items, 5, g)
    groups = shuffled_groups(num_items, g) if use_groups else None
    sim = torch.randn(num_items, c2i.numel(), generator=g, dtype=torch.float64)
    if quantised:  # few distinct values: many ties with the ground truth
        sim = torch.randint(0, 4, sim.shape, generator=g).double() / 4
    want_items, want_captions = reference_ranks(sim, c2i, groups)
    want = reference_metrics(want_items, want_captions)
    for chunk_size in CHUNK_SIZES:
        items, captions = retrieval_ranks(sim, c2i, groups, chunk_size=chunk_size)
        assert items.tolist() == want_items, chunk_size
        assert captions.tolist() == want_captions, chunk_size
        assert_metrics_close(retrieval_metrics(sim, c2i, groups, chunk_size=chunk_size), want)


def test_float32_single_caption_sorted_layout():
    g = torch.Generator().manual_seed(5)
    sim = torch.randn(40, 40, generator=g) + 3 * torch.eye(40)
    c2i = torch.arange(40)
    want = reference_ranks(sim, c2i)
    for chunk_size in CHUNK_SIZES:
        items, captions = retrieval_ranks(sim, c2i, chunk_size=chunk_size)
        assert (items.tolist(), captions.tolist()) == want


def test_uneven_captions_per_item():
    g = torch.Generator().manual_seed(6)
    c2i = torch.tensor([0, 1, 1, 2, 2, 2, 3, 3, 3, 3, 4])[torch.randperm(11, generator=g)]
    sim = torch.randn(5, 11, generator=g, dtype=torch.float64)
    want = reference_ranks(sim, c2i)
    for chunk_size in (1, 2, 4, 5):
        items, captions = retrieval_ranks(sim, c2i, chunk_size=chunk_size)
        assert (items.tolist(), captions.tolist()) == want


def test_grouped_items_with_captions_already_in_group_order():
    # Items reorder (groups 1, 0, 1, 0) while the captions are already in that order.
    g = torch.Generator().manual_seed(7)
    groups, c2i = torch.tensor([1, 0, 1, 0]), torch.tensor([1, 3, 0, 2])
    sim = torch.randn(4, 4, generator=g, dtype=torch.float64)
    want = reference_ranks(sim, c2i, groups)
    for chunk_size in (1, 2, 3, 4):
        items, captions = retrieval_ranks(sim, c2i, groups, chunk_size=chunk_size)
        assert (items.tolist(), captions.tolist()) == want


def test_ties_are_optimistic():
    # Item 0 owns captions 0 and 1, item 1 owns caption 2.
    sim = torch.tensor([[0.5, 0.2, 0.5], [0.5, 0.1, 0.9]])
    items, captions = retrieval_ranks(sim, [0, 0, 1])
    assert items.tolist() == [1, 1]  # item 0: caption 2 ties its best ground truth (0.5)
    assert captions.tolist() == [1, 1, 1]  # caption 0: item 1 ties its ground truth (0.5)


def test_tie_rule_constructed():
    # All similarities equal: every anchor ties with everything, so every rank is 1.
    sim = torch.zeros(4, 8)
    c2i = torch.arange(4).repeat(2)
    items, captions = retrieval_ranks(sim, c2i, chunk_size=3)
    assert items.tolist() == [1] * 4 and captions.tolist() == [1] * 8
    m = retrieval_metrics(sim, c2i)
    assert m["r1_i2t"] == m["r1_t2i"] == 100.0 and m["rsum"] == 600.0
    # One candidate strictly above the ground truth counts; one equal to it does not.
    sim = torch.tensor([[0.3, 0.7, 0.3, 0.1], [0.0, 0.0, 0.0, 0.0]])
    items, _ = retrieval_ranks(sim, [0, 1, 1, 1])
    assert items[0].item() == 2  # 0.7 > 0.3 counts, the second 0.3 does not


def test_metrics_from_ranks_by_hand():
    m = metrics_from_ranks(torch.tensor([1, 2, 6, 11]), torch.tensor([1, 1, 3, 20, 5]))
    assert m["r1_i2t"] == 25.0 and m["r5_i2t"] == 50.0 and m["r10_i2t"] == 75.0
    assert m["r1_t2i"] == 40.0 and m["r5_t2i"] == 80.0 and m["r10_t2i"] == 80.0
    assert m["rsum"] == 25 + 50 + 75 + 40 + 80 + 80
    assert m["medr_i2t"] == 4.0  # median of (1, 2, 6, 11) is 4.0
    assert m["medr_t2i"] == 3.0 and m["meanr_t2i"] == 6.0 and m["meanr_i2t"] == 5.0
    assert metrics_from_ranks(torch.tensor([1, 2]), torch.tensor([1]))["medr_i2t"] == 1.0  # 1.5 floored


# ---------------------------------------------------------------- embeddings, chunked vs full

@pytest.mark.parametrize("use_groups", [False, True])
def test_embeddings_exact_arithmetic_match_reference(use_groups):
    # Small integers in float64: every dot product is exact whatever the tile shape, and ties abound.
    g = torch.Generator().manual_seed(11)
    num_items = 31
    c2i = multi_caption(num_items, 5, g)
    groups = shuffled_groups(num_items, g) if use_groups else None
    images = torch.randint(-2, 3, (num_items, 6), generator=g).double()
    texts = torch.randint(-2, 3, (c2i.numel(), 6), generator=g).double()
    want_items, want_captions = reference_ranks(images @ texts.T, c2i, groups)
    for chunk_size in CHUNK_SIZES:
        items, captions = retrieval_ranks_from_embeddings(images, texts, c2i, groups, chunk_size=chunk_size)
        assert items.tolist() == want_items, chunk_size
        assert captions.tolist() == want_captions, chunk_size


def test_embeddings_chunked_equal_full():
    g = torch.Generator().manual_seed(12)
    num_items = 50
    c2i = multi_caption(num_items, 5, g)
    images = torch.nn.functional.normalize(torch.randn(num_items, 32, generator=g, dtype=torch.float64), dim=1)
    texts = torch.nn.functional.normalize(images[c2i] + torch.randn(c2i.numel(), 32, generator=g, dtype=torch.float64), dim=1)
    full = retrieval_metrics_from_embeddings(images, texts, c2i, chunk_size=num_items)
    assert_metrics_close(full, reference_metrics(*reference_ranks(images @ texts.T, c2i)))
    for chunk_size in (1, 7, 16, 49):
        assert retrieval_metrics_from_embeddings(images, texts, c2i, chunk_size=chunk_size) == full
    assert 0 < full["r1_i2t"] < 100  # the data is neither trivial nor hopeless


def test_emoji_groups(emoji_dir):
    data = json.loads((emoji_dir / "dataset_emoji.json").read_text())
    images = [im for im in data["images"] if im["split"] == "test"]
    concepts = sorted({im["concept"] for im in images})
    group = torch.tensor([concepts.index(im["concept"]) for im in images])
    c2i = torch.tensor([i for i, im in enumerate(images) for _ in im["sentences"]])
    assert (len(images), c2i.numel()) == (514, 2517)
    # Captions embed their concept; the styles of a concept are near but distinct copies.
    g = torch.Generator().manual_seed(13)
    unit = torch.nn.functional.normalize
    concept_emb = unit(torch.randn(len(concepts), 16, generator=g, dtype=torch.float64), dim=1)
    image_emb = unit(concept_emb[group] + 0.01 * torch.randn(len(images), 16, generator=g, dtype=torch.float64), dim=1)
    text_emb = unit(concept_emb[group[c2i]] + 0.01 * torch.randn(c2i.numel(), 16, generator=g, dtype=torch.float64), dim=1)
    with_groups = retrieval_metrics_from_embeddings(image_emb, text_emb, c2i, group, chunk_size=64)
    assert with_groups["r1_i2t"] == 100.0 and with_groups["r1_t2i"] == 100.0
    without = retrieval_metrics_from_embeddings(image_emb, text_emb, c2i, chunk_size=64)
    # The other styles of the concept now count as misses: about a third of R@1 is left.
    assert without["r1_i2t"] < 50.0 and without["r1_t2i"] < 50.0
    assert_metrics_close(without, reference_metrics(*reference_ranks(image_emb @ text_emb.T, c2i)))


# ---------------------------------------------------------------- COCO protocol

def test_coco_protocol_matches_loop_over_folds():
    g = torch.Generator().manual_seed(14)
    num_items, num_folds = 40, 5
    c2i = multi_caption(num_items, 5, g)
    groups = shuffled_groups(num_items, g)
    images = torch.randn(num_items, 8, generator=g, dtype=torch.float64)
    texts = images[c2i] + 1.5 * torch.randn(c2i.numel(), 8, generator=g, dtype=torch.float64)
    out = coco_protocol(images, texts, c2i, groups, num_folds=num_folds, chunk_size=3)
    fold_size = num_items // num_folds
    per_fold = []
    for f in range(num_folds):
        caps = [j for j in range(c2i.numel()) if f * fold_size <= c2i[j] < (f + 1) * fold_size]
        sim = torch.stack([images[i] @ texts[caps].T for i in range(f * fold_size, (f + 1) * fold_size)])
        local = [int(c2i[j]) - f * fold_size for j in caps]
        per_fold.append(reference_metrics(*reference_ranks(sim, local, groups[f * fold_size:(f + 1) * fold_size])))
    assert len(out["folds"]) == num_folds
    for got, want in zip(out["folds"], per_fold):
        assert_metrics_close(got, want)
    assert_metrics_close(out["folds_mean"], {k: sum(m[k] for m in per_fold) / num_folds for k in METRIC_KEYS})
    assert_metrics_close(out["full"], reference_metrics(*reference_ranks(images @ texts.T, c2i, groups)))


# ---------------------------------------------------------------- validation

def test_rejects_bad_input():
    sim = torch.randn(3, 6)
    c2i = torch.tensor([0, 0, 1, 1, 2, 2])
    cases = [
        (lambda: retrieval_metrics(torch.randn(3, 6, 1), c2i), "sim"),
        (lambda: retrieval_metrics(torch.ones(3, 6, dtype=torch.long), c2i), "sim"),
        (lambda: retrieval_metrics(sim, c2i[:5]), "caption_to_item"),
        (lambda: retrieval_metrics(sim, c2i.reshape(2, 3)), "caption_to_item"),
        (lambda: retrieval_metrics(sim, c2i.double()), "caption_to_item"),
        (lambda: retrieval_metrics(sim, torch.tensor([0, 0, 1, 1, 2, 3])), "caption_to_item"),
        (lambda: retrieval_metrics(sim, torch.tensor([0, 0, 1, 1, 2, -1])), "caption_to_item"),
        (lambda: retrieval_metrics(sim, torch.tensor([0, 0, 1, 1, 0, 0])), "item 2 no caption"),
        (lambda: retrieval_metrics(sim, c2i, torch.tensor([0, 1])), "item_groups"),
        (lambda: retrieval_metrics(sim, c2i, chunk_size=0), "chunk_size"),
        (lambda: retrieval_metrics(sim.index_put((torch.tensor(1), torch.tensor(2)), torch.tensor(float("nan"))), c2i), "sim contains NaN"),
        (lambda: retrieval_metrics_from_embeddings(torch.randn(3, 4), torch.randn(6, 5), c2i), "text_emb"),
        (lambda: retrieval_metrics_from_embeddings(torch.randn(3), torch.randn(6, 4), c2i), "image_emb"),
        (lambda: retrieval_metrics_from_embeddings(torch.full((3, 4), float("nan")), torch.randn(6, 4), c2i), "image_emb contains NaN"),
        (lambda: retrieval_metrics_from_embeddings(torch.randn(3, 4), torch.randn(6, 4).double(), c2i), "text_emb"),
        (lambda: retrieval_metrics_from_embeddings(torch.randn(3, 4), torch.randn(5, 4), c2i), "caption_to_item"),
        (lambda: coco_protocol(torch.randn(3, 4), torch.randn(6, 4), c2i, num_folds=2), "num_folds"),
    ]
    for call, words in cases:
        with pytest.raises(ValueError) as excinfo:
            call()
        for word in words.split(" "):
            assert word in str(excinfo.value), (words, str(excinfo.value))


def test_accepts_lists_and_leaves_inputs_untouched():
    sim = torch.tensor([[0.9, 0.1], [0.2, 0.8]], requires_grad=True)
    m = retrieval_metrics(sim, [0, 1], [5, 6])
    assert m["r1_i2t"] == 100.0 and m["medr_t2i"] == 1.0
    assert sim.grad is None
