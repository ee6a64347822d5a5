"""Shared test fixtures: where the real emoji data set lies.

The emoji set (Karpathy format, real images and captions) lives next to the repository in
``../shared/datasets/emoji`` (CI always has it), or where ``UNITUNE_EMOJI_DIR`` says. Tests
that need its contents skip with the reason where it is absent, as on a user's clone.
"""

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EMOJI_DIR = Path(os.environ.get("UNITUNE_EMOJI_DIR") or REPO.parent / "shared" / "datasets" / "emoji")
EMOJI_MISSING = f"emoji data set not found at {EMOJI_DIR} (set UNITUNE_EMOJI_DIR)"


def emoji_present() -> bool:
    return (EMOJI_DIR / "dataset_emoji.json").is_file()


@pytest.fixture
def emoji_dir() -> Path:
    """The emoji data set's folder; skips the test (saying where it looked) when absent."""
    if not emoji_present():
        pytest.skip(EMOJI_MISSING)
    return EMOJI_DIR


@pytest.fixture
def emoji_job_env(monkeypatch, tmp_path):
    """Lets `jobs/emoji_two_tower.yaml` validate where the data set is absent: config tests
    check the job file, not the data; `validate` also checks the data it finds, so the stand-in
    is a tiny valid set (one image per split, one batch of train captions)."""
    if not emoji_present():
        from PIL import Image

        images = [{"filename": f"{s}.png", "imgid": i, "split": s,
                   "sentences": [{"raw": f"an emoji {s} {k}"} for k in range(128 if s == "train" else 1)]}
                  for i, s in enumerate(["train", "val", "test"])]
        for image in images:
            Image.new("RGB", (8, 8)).save(tmp_path / image["filename"])
        (tmp_path / "dataset_emoji.json").write_text(json.dumps({"images": images}))
        monkeypatch.setenv("UNITUNE_EMOJI_DIR", str(tmp_path))
    else:
        monkeypatch.setenv("UNITUNE_EMOJI_DIR", str(EMOJI_DIR))
