"""benchmarks/emoji_subset.py, run as a user runs it, checked against the emoji set itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "emoji_subset.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_subset_keeps_whole_concepts_apart_and_its_captions_are_the_images_own(emoji_dir, tmp_path):
    out = tmp_path / "subset.json"
    sizes = "--train 40 --val 9 --test 11 --captions 2 --seed 3".split()
    done = run(str(out), "--emoji", str(emoji_dir), *sizes)
    assert done.returncode == 0, done.stderr
    source = {i["imgid"]: i for i in json.loads((emoji_dir / "dataset_emoji.json").read_text())["images"]}
    images = json.loads(out.read_text())["images"]
    assert [sum(i["split"] == s for i in images) for s in ("train", "val", "test")] == [40, 9, 11]
    concepts = [i["concept"] for i in images]
    assert len(set(concepts)) == len(concepts)  # one image per concept, so none crosses a split
    for image in images:
        original = source[image["imgid"]]
        for key in ("filename", "split", "concept"):
            assert image[key] == original[key]
        assert (emoji_dir / image["filename"]).is_file()
        assert len(image["sentences"]) == 2
        assert all(s in original["sentences"] for s in image["sentences"])
        assert image["sentids"] == [s["sentid"] for s in image["sentences"]]
    again = tmp_path / "again.json"
    assert run(str(again), "--emoji", str(emoji_dir), *sizes).returncode == 0
    assert again.read_bytes() == out.read_bytes()  # seeded


def test_subset_refuses_more_concepts_than_a_split_has(emoji_dir, tmp_path):
    done = run(str(tmp_path / "x.json"), "--emoji", str(emoji_dir), "--test", "100000")
    assert done.returncode != 0
    assert "split 'test' has" in done.stderr and "100000 asked" in done.stderr
    assert not (tmp_path / "x.json").exists()


def test_subset_names_a_missing_emoji_folder(tmp_path):
    done = run(str(tmp_path / "x.json"), "--emoji", str(tmp_path / "nowhere"))
    assert done.returncode != 0
    assert f"{tmp_path / 'nowhere' / 'dataset_emoji.json'}: no such file" in done.stderr
