"""The synthetic generator: determinism, caching, hard negatives, learnability."""

import json
import multiprocessing
import os
import time

import numpy as np
import pytest
import torch
from torch import nn

from unitune.data import build_dataset, generate_synthetic
from unitune.data.synthetic import COLORS, SHAPES, SIZE_WORDS
from unitune.data.video import decode_frames, open_video

SMALL = {"num_train": 24, "num_val": 8, "num_test": 7, "captions_per_item": 3, "image_size": 32, "num_frames": 6}


def rows(manifest):
    with open(manifest) as handle:
        return [json.loads(line) for line in handle]


def spec(cache_dir, modality="image", frames=8, **synthetic):
    """build_dataset's keywords for the synthetic set; ``frames``: data.num_frames."""
    return dict(format="synthetic", modality=modality, splits={"train": "train", "val": "val", "test": "test"},
                num_frames=frames, on_bad_sample="error", synthetic={"cache_dir": str(cache_dir), **SMALL, **synthetic})


@pytest.fixture(scope="module")
def image_set(tmp_path_factory):
    return generate_synthetic(str(tmp_path_factory.mktemp("synth")), modality="image", **SMALL)


@pytest.fixture(scope="module")
def video_set(tmp_path_factory):
    return generate_synthetic(str(tmp_path_factory.mktemp("synth")), modality="video", **SMALL)


def test_deterministic_by_seed_and_cached(tmp_path, image_set):
    again = generate_synthetic(str(tmp_path / "a"), modality="image", **SMALL)
    assert rows(again) == rows(image_set)
    for row in rows(again)[:5]:
        a = open(os.path.join(os.path.dirname(again), row["image"]), "rb").read()
        b = open(os.path.join(os.path.dirname(image_set), row["image"]), "rb").read()
        assert a == b
    other = generate_synthetic(str(tmp_path / "a"), modality="image", **{**SMALL, "seed": 1})
    assert other != again and rows(other) != rows(again)
    stamp = os.path.getmtime(again)
    time.sleep(0.01)
    assert generate_synthetic(str(tmp_path / "a"), modality="image", **SMALL) == again
    assert os.path.getmtime(again) == stamp  # read from the cache, not rewritten
    assert not [n for n in os.listdir(tmp_path / "a") if n.startswith(".tmp")]


def _generate(cache_dir):
    return generate_synthetic(cache_dir, modality="image", **SMALL)


def test_parallel_generation_gives_one_complete_set(tmp_path):
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(3) as pool:
        paths = pool.map(_generate, [str(tmp_path)] * 3)
    assert len(set(paths)) == 1
    assert len(rows(paths[0])) == 24 + 8 + 7
    assert [n for n in os.listdir(tmp_path) if not n.startswith(".")] == [os.path.basename(os.path.dirname(paths[0]))]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]


def test_splits_counts_and_distinct_scenes(image_set):
    data = rows(image_set)
    counts = {s: sum(r["split"] == s for r in data) for s in ("train", "val", "test")}
    assert counts == {"train": 24, "val": 8, "test": 7}
    assert len({json.dumps(r["scene"]) for r in data}) == len(data)
    assert all(len(r["captions"]) == 3 for r in data)
    all_captions = [c for r in data for c in r["captions"]]
    owners = {}
    for r in data:
        for c in r["captions"]:
            owners.setdefault(c, set()).add(r["id"])
    assert all(len(o) == 1 for o in owners.values())  # no caption describes two items
    assert len(set(all_captions)) >= len(data)


def _objects(scene):
    return [tuple(o) for o in scene["objects"]]


def test_image_hard_negatives_differ_in_one_attribute_or_the_relation(image_set):
    by_id = {r["id"]: r for r in rows(image_set)}
    pairs = [(r, by_id[r["hard_negative"]]) for r in by_id.values() if r["hard_negative"] is not None]
    assert len(pairs) >= len(by_id) - 3
    for a, b in pairs:
        assert a["split"] == b["split"] and b["hard_negative"] == a["id"]
        oa, ob = _objects(a["scene"]), _objects(b["scene"])
        assert len(oa) == len(ob) and a["scene"]["axis"] == b["scene"]["axis"]
        changed = [(x, y) for x, y in zip(oa, ob) if x != y]
        if sorted(oa) == sorted(ob):  # relation: the same shapes, two swapped
            assert len(changed) == 2 and changed[0] == changed[1][::-1]
        else:  # one attribute of one shape
            assert len(changed) == 1
            assert sum(u != v for u, v in zip(*changed[0])) == 1


def test_image_captions_name_every_shape(image_set):
    for r in rows(image_set):
        for caption in r["captions"]:
            words = caption.split()
            for size, color, shape in _objects(r["scene"]):
                assert color in words and shape in words
                assert any(w in words for w in SIZE_WORDS[size])
            assert set(words) - {"a", "there", "is", "that", "left", "right", "of", "to", "the", "above",
                                 "over", "below", "under", *COLORS, *SHAPES, "small", "little", "large", "big"} == set()


def test_video_hard_negative_is_the_clip_played_backwards(video_set):
    folder = os.path.dirname(video_set)
    by_id = {r["id"]: r for r in rows(video_set)}
    checked = 0
    for r in by_id.values():
        partner = r["hard_negative"]
        if partner is None or partner < r["id"]:
            continue
        a, b = (os.path.join(folder, by_id[i]["video"]) for i in (r["id"], partner))
        n = len(open_video(a))
        assert n == len(open_video(b)) == SMALL["num_frames"]
        fa, fb = decode_frames(a, list(range(n))), decode_frames(b, list(range(n)))
        assert np.array_equal(fa, fb[::-1])  # lossless: exactly the same frames reversed
        # so the order-blind mean of the frames is identical...
        assert np.array_equal(fa.astype(np.int64).sum(0), fb.astype(np.int64).sum(0))
        # ...while the clips themselves differ (it is not a static scene)
        assert not np.array_equal(fa, fb)
        checked += 1
    assert checked >= 15


def test_video_captions_are_reversed_events(video_set):
    by_id = {r["id"]: r for r in rows(video_set)}
    opposite = {"up": "down", "down": "up", "left": "right", "right": "left", "grow": "shrink", "shrink": "grow"}
    for r in by_id.values():
        if r["hard_negative"] is None:
            continue
        a, b = r["scene"], by_id[r["hard_negative"]]["scene"]
        if a["event"] == "move":
            assert b["event"] == "move" and b["arg"] == opposite[a["arg"]]
        elif a["event"] == "turn":
            assert (a["actor"][1], a["arg"]) == (b["arg"], b["actor"][1])
        else:
            assert b["event"] == opposite[a["event"]]
        assert a["companion"] == b["companion"]


def test_build_dataset_reads_the_generated_files(tmp_path):
    train = build_dataset("train", **spec(tmp_path))
    assert len(train.items) == 24 and len(train) == 72 and train.modality == "image"
    assert train.item_groups is None and train.skipped == 0
    sample = train[5]
    assert sample["visual"].shape == (3, 32, 32)
    assert sample["text"] == train.captions[5]
    assert sample["positive_id"] == int(train.item_ids[train.caption_to_item[5]])
    video = build_dataset("val", **spec(tmp_path, "video", frames=4), train=False)
    assert video[0]["visual"].shape == (4, 3, 32, 32)
    assert video.item_dataset()[1]["visual"].shape == (4, 3, 32, 32)


class TinyImageText(nn.Module):
    """A minimal CLIP-like pair: a 3-layer CNN and a bag-of-words text encoder."""

    def __init__(self, vocab, dim=64):
        super().__init__()
        self.vocab = {w: i + 1 for i, w in enumerate(vocab)}
        self.cnn = nn.Sequential(
            nn.Conv2d(3, 24, 4, 4), nn.ReLU(), nn.Conv2d(24, 48, 3, 2, 1), nn.ReLU(),
            nn.Flatten(), nn.LazyLinear(dim))
        self.words = nn.EmbeddingBag(len(vocab) + 1, dim, mode="mean")
        self.position = nn.EmbeddingBag(16 * (len(vocab) + 1), dim, mode="mean")  # word x position
        self.text = nn.Sequential(nn.ReLU(), nn.Linear(dim, dim))

    def encode_text(self, texts):
        ids = [[self.vocab[w] for w in t.split()] for t in texts]
        flat = torch.tensor([i for s in ids for i in s])
        pos = torch.tensor([min(k, 15) * (len(self.vocab) + 1) + i for s in ids for k, i in enumerate(s)])
        offsets = torch.tensor([0] + [len(s) for s in ids[:-1]]).cumsum(0)
        return nn.functional.normalize(self.text(self.words(flat, offsets) + self.position(pos, offsets)), dim=-1)

    def encode_image(self, x):
        return nn.functional.normalize(self.cnn(x), dim=-1)


@pytest.mark.slow
def test_learnable_far_above_chance_within_a_minute(tmp_path):
    synthetic = {"num_train": 512, "num_val": 128, "num_test": 128, "image_size": 64}
    train = build_dataset("train", **spec(tmp_path, **synthetic))
    val = build_dataset("val", **spec(tmp_path, **synthetic), train=False)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convs on a shared CPU: one thread is fastest
    images = torch.stack([train.load_visual(i) for i in range(len(train.items))])
    model = TinyImageText(sorted({w for c in train.captions + val.captions for w in c.split()}))
    model.encode_image(images[:2])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    start = time.time()
    while time.time() - start < 40:
        order = torch.randperm(len(train))[:128]
        items = train.caption_to_item[order]
        img, txt = model.encode_image(images[items]), model.encode_text([train.captions[j] for j in order])
        logits = 20 * img @ txt.T
        same = items[:, None] == items[None, :]
        logits = logits.masked_fill(same & ~torch.eye(len(items), dtype=torch.bool), -1e4)
        target = torch.arange(len(items))
        loss = (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        vimg = model.encode_image(torch.stack([val.load_visual(i) for i in range(len(val.items))]))
        vtxt = model.encode_text(val.captions)
    hits = [int((vtxt[j] @ vimg.T).argmax()) == int(val.caption_to_item[j]) for j in range(len(val))]
    r1 = sum(hits) / len(hits)
    torch.set_num_threads(threads)
    print(f"text->image R@1 on 128 val items after 40 s: {r1:.3f} (chance {1 / 128:.3f})")
    assert r1 > 10 / 128
