"""Bad data: each case raises UserError naming the file (error) or is skipped and counted (skip)."""

import json

import numpy as np
import pytest
from PIL import Image

from unitune.data import build_dataset, check_batch_size
from unitune.data.synthetic import write_mp4
from unitune.errors import UserError


def manifest(tmp_path, rows, modality="image", policy="error"):
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return dict(format="manifest", modality=modality, root=None, annotations=str(path),
                splits={"train": "train", "val": "val", "test": "test"}, num_frames=2,
                on_bad_sample=policy, synthetic=None)


def png(tmp_path, name, value=100):
    Image.fromarray(np.full((12, 12, 3), value, np.uint8)).save(tmp_path / name)
    return name


def truncated_png(tmp_path, name):
    png(tmp_path, "full_" + name)
    data = (tmp_path / ("full_" + name)).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) - 30])
    return name


def corrupt(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x89PNG this is not really a png" * 10)
    return name


def good_rows(tmp_path, n=3, split="train"):
    return [{"image": png(tmp_path, f"ok{k}.png", 40 * k), "caption": f"good {k}", "id": k, "split": split}
            for k in range(n)]


BAD_IMAGES = {
    "missing file": lambda t: "nowhere.png",
    "truncated image": lambda t: truncated_png(t, "cut.png"),
    "corrupt image": lambda t: corrupt(t, "junk.png"),
    "empty file": lambda t: (t / "zero.png").write_bytes(b"") and None or "zero.png",
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_image_error_names_the_file(tmp_path, case):
    name = BAD_IMAGES[case](tmp_path)
    rows = good_rows(tmp_path) + [{"image": name, "caption": "bad", "id": 99, "split": "train"}]
    spec = manifest(tmp_path, rows)
    try:  # missing/empty files are caught at construction, content errors on first use
        dataset = build_dataset("train", **spec)
    except UserError as exc:
        assert name in str(exc)
        return
    with pytest.raises(UserError, match=name):
        dataset[len(dataset) - 1]


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_image_skip_is_counted_and_never_served(tmp_path, case):
    name = BAD_IMAGES[case](tmp_path)
    rows = good_rows(tmp_path) + [{"image": name, "caption": "bad", "id": 99, "split": "train"}]
    dataset = build_dataset("train", **manifest(tmp_path, rows, policy="skip"))
    assert dataset.skipped == 1 and name in dataset.skip_reasons[0]
    assert dataset.item_ids.tolist() == [0, 1, 2] and "bad" not in dataset.captions
    assert all(dataset[j]["visual"].shape == (3, 224, 224) for j in range(len(dataset)))


def bad_videos(tmp_path):
    write_mp4(str(tmp_path / "good.mp4"), [np.full((32, 32, 3), 9 * k, np.uint8) for k in range(6)])
    data = (tmp_path / "good.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.mp4").write_bytes(b"junk" * 100)
    import av

    with av.open(str(tmp_path / "zero.mp4"), "w") as container:  # a stream, no frames
        stream = container.add_stream("libx264", rate=8)
        stream.height = stream.width = 32
        stream.pix_fmt = "yuv420p"
    return ["cut.mp4", "junk.mp4", "zero.mp4", "gone.mp4"]


def test_bad_videos_error_and_skip(tmp_path):
    names = bad_videos(tmp_path)
    rows = [{"video": "good.mp4", "caption": "fine", "id": 0, "split": "train"}]
    rows += [{"video": n, "caption": f"bad {k}", "id": k + 1, "split": "train"} for k, n in enumerate(names)]
    skipped = build_dataset("train", **manifest(tmp_path, rows, "video", "skip"))
    assert skipped.skipped == 4 and skipped.captions == ["fine"]
    assert sorted(r.split(":")[0].rsplit("/", 1)[-1] for r in skipped.skip_reasons) == sorted(names)
    assert skipped[0]["visual"].shape == (2, 3, 224, 224)
    for k, name in enumerate(names):
        only = [rows[0], rows[k + 1]]
        try:
            dataset = build_dataset("train", **manifest(tmp_path, only, "video"))
            dataset[1]
        except UserError as exc:
            assert name in str(exc)
        else:
            pytest.fail(f"{name} was served")


def test_empty_caption_error_names_file_and_line(tmp_path):
    rows = good_rows(tmp_path)
    rows[1]["caption"] = "   "
    with pytest.raises(UserError, match=r"m\.jsonl: line 2: caption 0 is empty"):
        build_dataset("train", **manifest(tmp_path, rows))
    dataset = build_dataset("train", **manifest(tmp_path, rows, policy="skip"))
    # the caption is dropped, and with it the item that has no caption left
    assert dataset.skipped == 2 and dataset.item_ids.tolist() == [0, 2]


def test_empty_split_and_all_skipped(tmp_path):
    rows = good_rows(tmp_path) + [{"image": "nowhere.png", "caption": "x", "id": 5, "split": "val"}]
    with pytest.raises(UserError, match=r"nowhere\.png"):
        build_dataset("val", **manifest(tmp_path, rows))
    with pytest.raises(UserError, match=r"m\.jsonl: split 'val' \(data\.splits\.val\) is empty after skipping 1"):
        build_dataset("val", **manifest(tmp_path, rows, policy="skip"))


def test_unknown_split_names_file_and_key(tmp_path):
    spec = manifest(tmp_path, good_rows(tmp_path))
    with pytest.raises(UserError, match=r"m\.jsonl: split 'test' \(data\.splits\.test\) not found; available: train"):
        build_dataset("test", **spec)
    with pytest.raises(UserError, match=r"data\.splits\.holdout"):
        build_dataset("holdout", **spec)


def test_fewer_captions_than_one_batch(tmp_path):
    dataset = build_dataset("train", **manifest(tmp_path, good_rows(tmp_path)))
    check_batch_size(dataset, 3)
    with pytest.raises(UserError, match=r"m\.jsonl: split 'train' has 3 captions, fewer than one batch of 4 \(train\.batch_size\)"):
        check_batch_size(dataset, 4)


def test_bad_policy_and_missing_annotations(tmp_path):
    with pytest.raises(UserError, match="data.on_bad_sample"):
        build_dataset("train", **manifest(tmp_path, good_rows(tmp_path), policy="ignore"))
    spec = manifest(tmp_path, good_rows(tmp_path))
    spec["annotations"] = str(tmp_path / "absent.jsonl")
    with pytest.raises(UserError, match=r"absent\.jsonl: manifest not found"):
        build_dataset("train", **spec)
    (tmp_path / "broken.jsonl").write_text('{"image": "a.png",\n')
    spec["annotations"] = str(tmp_path / "broken.jsonl")
    with pytest.raises(UserError, match=r"broken\.jsonl: line 1: invalid JSON"):
        build_dataset("train", **spec)


def test_folder_for_an_image_and_caption_not_text(tmp_path):
    (tmp_path / "folder.png").mkdir()
    rows = good_rows(tmp_path) + [{"image": "folder.png", "caption": "x", "id": 9, "split": "train"}]
    with pytest.raises(UserError, match=r"folder\.png: image is a folder, not a file \(listed at .*m\.jsonl: line 4\)"):
        build_dataset("train", **manifest(tmp_path, rows))
    rows = good_rows(tmp_path)
    rows[0]["caption"] = 7
    with pytest.raises(UserError, match=r"m\.jsonl: line 1: caption 0 is not text \(got int\)"):
        build_dataset("train", **manifest(tmp_path, rows))


def test_not_utf8_names_the_line(tmp_path):
    spec = manifest(tmp_path, good_rows(tmp_path))
    path = tmp_path / "m.jsonl"
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"good", b"g\xe9od")
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(UserError, match=r"m\.jsonl: line 2: not UTF-8 text \(byte 0xe9\)"):
        build_dataset("train", **spec)
    (tmp_path / "m.csv").write_bytes(b"image,caption,split\nok0.png,caf\xe9,train\n")
    spec["annotations"] = str(tmp_path / "m.csv")
    with pytest.raises(UserError, match=r"m\.csv: line 2: not UTF-8 text"):
        build_dataset("train", **spec)


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    spec = manifest(tmp_path, good_rows(tmp_path))
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert len(build_dataset("train", **spec)) == 3


def test_empty_manifest_and_karpathy_shapes(tmp_path):
    spec = manifest(tmp_path, [])
    with pytest.raises(UserError, match=r"m\.jsonl: the manifest has no rows"):
        build_dataset("train", **spec)
    (tmp_path / "k.json").write_text(json.dumps({"images": ["not an object"]}))
    karpathy = dict(format="karpathy", modality="image", root=None, annotations=str(tmp_path / "k.json"),
                    splits={"train": "train"}, num_frames=2, on_bad_sample="error", synthetic=None)
    with pytest.raises(UserError, match=r"k\.json: images\[0\] is not a JSON object"):
        build_dataset("train", **karpathy)
    (tmp_path / "k.json").write_text(json.dumps({"images": [{"filename": "a.png", "imgid": 0, "split": "train",
                                                             "sentences": "one caption"}]}))
    with pytest.raises(UserError, match=r"k\.json: images\[0\]\.sentences must be a list"):
        build_dataset("train", **karpathy)
    (tmp_path / "k.json").write_text('{"images": [\n  {"filename": "a.png",,}\n]}')
    with pytest.raises(UserError, match=r"k\.json: line 2: invalid JSON"):
        build_dataset("train", **karpathy)
