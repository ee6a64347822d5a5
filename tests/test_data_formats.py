"""karpathy, msrvtt and manifest formats on fixture files; emoji; collate; transform."""

import csv
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from unitune.data import CLIP_MEAN, CLIP_STD, Collator, build_dataset, collate, default_transform
from unitune.data.synthetic import write_mp4
from unitune.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def data_spec(**fields):
    base = {"format": "synthetic", "modality": "image", "root": None, "annotations": None,
            "splits": {"train": "train", "val": "val", "test": "test"}, "num_frames": 4, "on_bad_sample": "error"}
    return {**base, **fields}


def save_png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 30, 3), value, np.uint8)).save(path)


def fake_tokenize(texts):
    ids = [[len(w) for w in t.split()] for t in texts]
    width = max(map(len, ids))
    return {"input_ids": torch.tensor([i + [0] * (width - len(i)) for i in ids]),
            "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])}


# ------------------------------------------------------------------ karpathy
@pytest.fixture
def karpathy(tmp_path):
    images = []
    layout = [("train", "a"), ("train", "a"), ("restval", "b"), ("val", "c"), ("test", "d")]
    for imgid, (split, concept) in enumerate(layout):
        save_png(tmp_path / "imgs" / "sub" / f"{imgid}.png", 10 * imgid)
        images.append({"filename": f"{imgid}.png", "filepath": "sub", "imgid": 100 + imgid, "split": split,
                       "concept": concept,
                       "sentences": [{"raw": f"picture {imgid} caption {k}", "imgid": 100 + imgid} for k in range(1 + imgid % 3)]})
    path = tmp_path / "dataset_x.json"
    path.write_text(json.dumps({"dataset": "x", "images": images}))
    return data_spec(format="karpathy", annotations=str(path), root=str(tmp_path / "imgs"))


def test_karpathy_split_counts_ids_groups(karpathy):
    train = build_dataset("train", **karpathy, transform=default_transform(16))
    assert train.items[0].endswith(os.path.join("imgs", "sub", "0.png"))
    assert train.item_ids.tolist() == [100, 101]
    assert train.captions == ["picture 0 caption 0", "picture 1 caption 0", "picture 1 caption 1"]
    assert train.caption_to_item.tolist() == [0, 1, 1]
    assert train.item_groups.tolist() == [0, 0]  # both images are concept "a"
    assert {train[j]["positive_id"] for j in range(3)} == {0}  # positives matched on the group
    assert train[0]["visual"].shape == (3, 16, 16)


def test_karpathy_restval_only_when_asked(karpathy):
    karpathy["splits"]["train"] = "train+restval"
    train = build_dataset("train", **karpathy)
    assert train.item_ids.tolist() == [100, 101, 102] and len(train) == 1 + 2 + 3
    assert train.split == "train+restval"


def test_karpathy_unknown_split_names_file_and_key(karpathy):
    karpathy["splits"]["val"] = "valid"
    with pytest.raises(UserError, match=r"dataset_x\.json.*'valid'.*data\.splits\.val"):
        build_dataset("val", **karpathy)


def test_karpathy_without_concept_has_no_groups(tmp_path):
    save_png(tmp_path / "1.png", 0)
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"images": [{"filename": "1.png", "imgid": 7, "split": "test",
                                            "sentences": [{"raw": "x"}, {"raw": "y"}]}]}))
    test = build_dataset("test", **data_spec(format="karpathy", annotations=str(path)))
    assert test.item_groups is None and test[1]["positive_id"] == 7


# ------------------------------------------------------------------ msrvtt
@pytest.fixture
def msrvtt(tmp_path):
    folder = tmp_path / "msrvtt_data"
    videos = tmp_path / "MSRVTT" / "videos" / "all"
    videos.mkdir(parents=True)
    folder.mkdir()
    for n in range(6):
        write_mp4(str(videos / f"video{n}.mp4"), [np.full((16, 16, 3), 30 * n, np.uint8)] * 5)
    sentences = [{"caption": f"clip {n} sentence {k}", "video_id": f"video{n}", "sen_id": 20 * n + k}
                 for n in range(6) for k in range(20)]
    (folder / "MSRVTT_data.json").write_text(json.dumps({
        "info": {}, "videos": [{"video_id": f"video{n}", "id": n, "split": "train", "category": 0, "url": "u"}
                               for n in range(6)], "sentences": sentences}))
    with open(folder / "MSRVTT_train.9k.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_id"])
        writer.writerows([[f"video{n}"] for n in (0, 1, 2, 3)])
    with open(folder / "MSRVTT_JSFUSION_test.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["", "key", "vid_key", "video_id", "sentence"])
        writer.writerows([[i, f"ret{i}", f"msr{n}", f"video{n}", f"test sentence for {n}"] for i, n in enumerate((4, 5))])
    return data_spec(format="msrvtt", modality="video", annotations=str(folder / "MSRVTT_data.json"), root=str(videos),
                     splits={"train": "train", "val": "test", "test": "test"})


def test_msrvtt_1k_a(msrvtt):
    train = build_dataset("train", **msrvtt)
    assert train.modality == "video" and train.item_ids.tolist() == [0, 1, 2, 3]
    assert len(train) == 4 * 20  # every caption of the 9k videos
    assert train.captions[:2] == ["clip 0 sentence 0", "clip 0 sentence 1"]
    assert train[25]["positive_id"] == 1 and train[25]["visual"].shape == (4, 3, 224, 224)
    test = build_dataset("test", **msrvtt, train=False)
    assert test.item_ids.tolist() == [4, 5] and test.captions == ["test sentence for 4", "test sentence for 5"]
    clip = test.item_dataset()[1]["visual"]
    expected = (30 * 5 / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(clip.mean(dim=(0, 2, 3)), expected, atol=0.05)


def test_msrvtt_default_root_and_unknown_split(msrvtt, tmp_path):
    with pytest.raises(UserError, match=r"'val'.*data\.splits\.val.*available: test, train"):
        build_dataset("val", **{**msrvtt, "splits": {"val": "val"}})
    msrvtt["root"] = None  # default: <annotations dir>/videos/all, which does not exist here
    with pytest.raises(UserError, match=r"video0\.mp4: video file not found"):
        build_dataset("train", **msrvtt)


def test_msrvtt_image_modality_is_refused(msrvtt):
    msrvtt["modality"] = "image"
    with pytest.raises(UserError, match="data.modality"):
        build_dataset("train", **msrvtt)


# ------------------------------------------------------------------ manifest
def test_manifest_jsonl_merges_ids_and_groups(tmp_path):
    for n in range(3):
        save_png(tmp_path / "m" / f"{n}.png", 50 * n)
    lines = [
        {"image": "m/0.png", "caption": "zero a", "id": "x0", "split": "train", "group": "g"},
        {"image": "m/0.png", "captions": ["zero b", "zero c"], "id": "x0", "split": "train", "group": "g"},
        {"image": "m/1.png", "caption": "one", "id": "x1", "split": "train", "group": "g"},
        {"image": "m/2.png", "caption": "two", "id": "x2", "split": "test"},
    ]
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    train = build_dataset("train", **data_spec(format="manifest", annotations=str(path)))
    assert train.captions == ["zero a", "zero b", "zero c", "one"]
    assert train.caption_to_item.tolist() == [0, 0, 0, 1]
    assert train.item_ids.tolist() == [0, 1]  # string ids: order of first appearance
    assert train.item_groups.tolist() == [0, 0]
    test = build_dataset("test", **data_spec(format="manifest", annotations=str(path)))
    assert test.item_ids.tolist() == [2] and test.item_groups is None


def test_manifest_csv_video_with_integer_ids(tmp_path):
    for n in (3, 9):
        write_mp4(str(tmp_path / f"v{n}.mp4"), [np.full((8, 8, 3), 40, np.uint8)] * 3)
    path = tmp_path / "data.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video", "caption", "id", "split"])
        writer.writerows([["v9.mp4", "nine", 9, "val"], ["v3.mp4", "three", 3, "val"], ["v3.mp4", "drei", 3, "val"]])
    val = build_dataset("val", **data_spec(format="manifest", modality="video", annotations=str(path), num_frames=2),
                        transform=default_transform(8))
    assert val.item_ids.tolist() == [9, 3] and val.captions == ["nine", "three", "drei"]
    assert val[2]["visual"].shape == (2, 3, 8, 8) and val[2]["positive_id"] == 3


def test_manifest_modality_mismatch_is_explained(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"video": "a.mp4", "caption": "c", "split": "train"}) + "\n")
    with pytest.raises(UserError, match=r"m\.jsonl: line 1: 'image' is missing.*data\.modality: video"):
        build_dataset("train", **data_spec(format="manifest", annotations=str(path)))


# ------------------------------------------------------------------ emoji (real data)
def test_emoji_counts_and_groups(emoji_dir):
    raw = json.loads((emoji_dir / "dataset_emoji.json").read_text())
    spec = data_spec(format="karpathy", annotations=str(emoji_dir / "dataset_emoji.json"))
    total_images = total_captions = 0
    concepts = set()
    for split in ("train", "val", "test"):
        ds = build_dataset(split, **spec)
        images = [im for im in raw["images"] if im["split"] == split]  # reference: a plain loop
        assert len(ds.items) == len(images)
        assert len(ds) == sum(len(im["sentences"]) for im in images)
        assert ds.item_ids.tolist() == [im["imgid"] for im in images]
        concept_of = [im["concept"] for im in images]
        groups = ds.item_groups.tolist()
        for a in range(0, len(images), 7):
            for b in range(len(images)):
                assert (groups[a] == groups[b]) == (concept_of[a] == concept_of[b])
        total_images += len(ds.items)
        total_captions += len(ds)
        concepts |= set(concept_of)
    assert (total_images, len(concepts), total_captions) == (4852, 1639, 23751)
    sample = ds[0]
    assert sample["visual"].shape == (3, 224, 224) and sample["text"] == raw_first_caption(raw, "test")


def raw_first_caption(raw, split):
    return next(im for im in raw["images"] if im["split"] == split)["sentences"][0]["raw"]


# ------------------------------------------------------------------ batching
def test_default_transform_matches_a_manual_computation():
    image = Image.fromarray(np.arange(40 * 60 * 3, dtype=np.uint8).reshape(40, 60, 3) % 251)
    out = default_transform(20)(image)
    resized = np.asarray(image.resize((30, 20), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    crop = resized[:, 5:25]
    expected = (torch.from_numpy(crop).permute(2, 0, 1) - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    assert out.shape == (3, 20, 20) and torch.allclose(out, expected, atol=1e-5)


def test_collate_and_loader_with_workers(msrvtt):
    train = build_dataset("train", **msrvtt, transform=default_transform(16))
    batch = collate([train[0], train[21], train[45]], fake_tokenize)
    assert batch["visual"].shape == (3, 4, 3, 16, 16)
    assert batch["positive_id"].tolist() == [0, 1, 2]
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, 4)
    collator = pickle.loads(pickle.dumps(Collator(fake_tokenize)))
    loader = DataLoader(train, batch_size=8, shuffle=True, num_workers=2, collate_fn=collator, drop_last=True)
    seen = 0
    for batch in loader:
        assert batch["visual"].shape == (8, 4, 3, 16, 16)
        assert batch["positive_id"].dtype == torch.long
        seen += 8
    assert seen == len(train)
