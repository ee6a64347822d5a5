"""The frozen-prefix feature cache: equivalence with the uncached loop, invalidation, reuse,
bad input (unwritable directory, full disk, truncated or corrupt entries), one build under
concurrency.

References: the same job with ``data.feature_cache=off`` (the whole model every step, with
the deterministic transform), and the cache's own files on disk.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import warnings
from pathlib import Path

import pytest
import torch

from unitune.config import load_job
from unitune.errors import UserError
from unitune.features import check, job_model, open_cache, prepare
from unitune.features import store
from unitune.features.key import entry_name, text_key, visual_key
from unitune.models.transforms import CLIP_MEAN, CLIP_STD, ImageTransform
from unitune.train import run_training

REPO = Path(__file__).resolve().parents[1]
METRICS = ("r1_i2t", "r5_i2t", "r10_i2t", "r1_t2i", "r5_t2i", "r10_t2i", "rsum", "medr_i2t", "meanr_t2i")


def small_job(tmp_path, *extra, cache=True):
    cache_value = str(tmp_path / "features") if cache else "off"
    return load_job(REPO / "jobs" / "demo.yaml", [
        "train.epochs=2", "data.synthetic.num_train=48", "data.synthetic.num_val=24",
        "data.synthetic.num_test=24", "train.batch_size=16", f"data.synthetic.cache_dir={tmp_path / 'data'}",
        "model.embed_dim=32", "data.augment=false", f"data.feature_cache={cache_value}", *extra,
    ])


def curve(job, **kwargs):
    reports = []
    run_training(job, report=lambda metrics, directory: reports.append(dict(metrics)), **kwargs)
    return reports


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.safetensors"))


# --- equivalence ---------------------------------------------------------------------------

@pytest.mark.parametrize("freeze", [
    ["model.freeze.visual_trainable_layers=1", "model.freeze.text_trainable_layers=1"],
    ["model.freeze.projections_only=true"],
    ["model.freeze.visual_trainable_layers=0"],  # visual cached, text runs whole
])
def test_cache_on_and_off_give_the_same_curve(tmp_path, freeze):
    on = curve(small_job(tmp_path, *freeze, cache=True), evaluate_test=True)
    off = curve(small_job(tmp_path, *freeze, cache=False), evaluate_test=True)
    assert [m["epoch"] for m in on] == [m["epoch"] for m in off] == [0, 1, 2]
    assert entries(tmp_path / "features")  # the cached run did use the cache
    for a, b in zip(on, off):
        for key in (*METRICS, "train_loss", "pos_sim", "hard_neg_sim"):
            if key in b:
                assert a[key] == pytest.approx(b[key], abs=1e-4), (a["epoch"], key)
    for key in METRICS:
        assert on[-1][f"test_{key}"] == pytest.approx(off[-1][f"test_{key}"], abs=1e-4), key


def test_video_cache_matches_the_uncached_loop(tmp_path):
    extra = ["data.modality=video", "data.synthetic.num_frames=4", "data.num_frames=4",
             "model.freeze.visual_trainable_layers=1", "model.video_pooling=seqTransf", "train.epochs=1"]
    on, off = curve(small_job(tmp_path, *extra)), curve(small_job(tmp_path, *extra, cache=False))
    for a, b in zip(on, off):
        for key in (*METRICS, "train_loss"):
            if key in b:
                assert a[key] == pytest.approx(b[key], abs=1e-4), (a["epoch"], key)


def test_resume_with_the_cache_continues_exactly(tmp_path):
    job = small_job(tmp_path, "model.freeze.visual_trainable_layers=1")
    full = curve(job)

    def crash_after_1(metrics, directory):
        if metrics["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(job, report=crash_after_1, checkpoint_dir=tmp_path / "ckpt")
    resumed = curve(job, resume_from=tmp_path / "ckpt")
    assert [m["epoch"] for m in resumed] == [2]
    for key in ("train_loss", "rsum"):
        assert resumed[0][key] == pytest.approx(full[-1][key], rel=1e-5)


# --- keys: invalidation and reuse ----------------------------------------------------------

def keys_of(job):
    train_set, model = job_model(job)
    train_set.transform = model.image_transform(train=False)
    split = model.frozen_split()
    return {"visual": entry_name(visual_key(model, train_set, split["visual"])),
            "text": entry_name(text_key(model, train_set, split["text"]))}


BASE = ["model.freeze.visual_trainable_layers=1", "model.freeze.text_trainable_layers=1"]


@pytest.mark.parametrize("change, visual_changes, text_changes", [
    (["seed=1"], True, True),                                          # other weights
    (["model.freeze.visual_trainable_layers=0"], True, False),         # visual split point
    (["model.freeze.text_trainable_layers=0"], False, True),           # text split point
    (["train.epochs=5", "loss.margin=0.1", "optim.lr=0.01"], False, False),  # nothing the prefix sees
])
def test_a_key_changes_exactly_when_its_inputs_do(tmp_path, change, visual_changes, text_changes):
    base, changed = keys_of(small_job(tmp_path, *BASE)), keys_of(small_job(tmp_path, *BASE, *change))
    assert (base["visual"] != changed["visual"]) == visual_changes
    assert (base["text"] != changed["text"]) == text_changes


def test_image_size_and_data_file_change_the_key(tmp_path):
    job = small_job(tmp_path, *BASE)
    train_set, model = job_model(job)
    train_set.transform = model.image_transform(train=False)
    k = model.frozen_split()["visual"]
    before = entry_name(visual_key(model, train_set, k))
    # Another deterministic transform (image size 48 instead of 64), same model and data.
    model.image_transform = lambda train: ImageTransform(resize=48, crop=48, mean=CLIP_MEAN, std=CLIP_STD,
                                                         train=train)
    assert entry_name(visual_key(model, train_set, k)) != before
    del model.image_transform
    assert entry_name(visual_key(model, train_set, k)) == before
    # The annotation file changes (one byte appended): both entries change.
    text_before = entry_name(text_key(model, train_set, model.frozen_split()["text"]))
    with open(train_set.source, "a") as handle:
        handle.write("\n")
    assert entry_name(visual_key(model, train_set, k)) != before
    assert entry_name(text_key(model, train_set, model.frozen_split()["text"])) != text_before


def test_prepare_builds_once_and_the_same_job_reuses(tmp_path):
    job = small_job(tmp_path, *BASE)
    first = prepare(job)
    assert first["entries_built"] == 4 and first["entries_reused"] == 0  # {train, val} x {visual, text}
    assert first["bytes"] == sum(p.stat().st_size for p in (tmp_path / "features").glob("*.safetensors"))
    second = prepare(job)
    assert second["entries_built"] == 0 and second["entries_reused"] == 4
    assert second["bytes"] == first["bytes"]
    # A trial of the same job finds every entry and builds nothing.
    names = entries(tmp_path / "features")
    mtimes = {n: (tmp_path / "features" / n).stat().st_mtime_ns for n in names}
    curve(small_job(tmp_path, *BASE, "train.epochs=1"))
    assert entries(tmp_path / "features") == names
    assert {n: (tmp_path / "features" / n).stat().st_mtime_ns for n in names} == mtimes
    # Another split point: new entries beside the old ones.
    assert prepare(small_job(tmp_path, "model.freeze.projections_only=true"))["entries_built"] == 4
    assert len(entries(tmp_path / "features")) == 8


# --- bad input -----------------------------------------------------------------------------

def test_unwritable_cache_directory_is_one_user_error_naming_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    job = small_job(tmp_path, *BASE, f"data.feature_cache={blocker / 'features'}")
    with pytest.raises(UserError, match=f"data.feature_cache: .*{blocker / 'features'}") as info:
        check(job)
    assert "\n" not in str(info.value)


def test_full_disk_leaves_no_entry_a_reader_would_trust(tmp_path, monkeypatch):
    job = small_job(tmp_path, *BASE)

    def no_space(tensors, path, metadata=None):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "save_file", no_space)
    with pytest.raises(UserError, match="No space left on device"):
        prepare(job)
    leftovers = [p.name for p in (tmp_path / "features").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []
    monkeypatch.undo()
    assert prepare(job)["entries_built"] == 4


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_sidecar", "delete"])
def test_a_damaged_entry_is_rebuilt_not_used(tmp_path, damage):
    job = small_job(tmp_path, *BASE)
    prepare(job)
    victim = sorted((tmp_path / "features").glob("train-visual-*.safetensors"))[0]
    good = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(good[: len(good) // 2])
    elif damage == "flip":
        data = bytearray(good)
        data[-5] ^= 0xFF
        victim.write_bytes(bytes(data))
    elif damage == "delete_sidecar":
        victim.with_suffix(".json").unlink()
    else:
        victim.unlink()
    stats = prepare(job)
    assert stats["entries_built"] == 1 and stats["entries_reused"] == 3
    assert victim.read_bytes() == good  # the same deterministic numbers again


def test_feature_cache_with_nothing_frozen_warns_and_trains(tmp_path):
    job = small_job(tmp_path, "train.epochs=1")
    with pytest.warns(UserWarning, match="data.feature_cache: .* has no effect"):
        assert check(job) is None
    with pytest.warns(UserWarning, match="no effect"):
        reports = curve(job)
    assert [m["epoch"] for m in reports] == [0, 1]
    assert not (tmp_path / "features").exists()
    with warnings.catch_warnings():  # auto, the default, says nothing
        warnings.simplefilter("error")
        assert check(small_job(tmp_path, "data.feature_cache=auto")) is None


def test_random_augmentation_with_a_cache_directory_is_refused(tmp_path):
    job = small_job(tmp_path, *BASE, "data.augment=true")
    with pytest.raises(UserError, match="data.feature_cache: .*data.augment is true"):
        check(job)
    # auto with augmentation: the cache is off, training runs the whole model.
    auto = small_job(tmp_path, *BASE, "data.augment=true", "data.feature_cache=auto")
    assert check(auto) is None and open_cache(auto, job_model(auto)[1]) is None


def test_yaml_off_and_relative_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = small_job(tmp_path, "data.feature_cache=off")
    assert job.data.feature_cache == "off"
    job = small_job(tmp_path, "data.feature_cache=rel/dir")
    assert job.data.feature_cache == str(tmp_path / "rel" / "dir")


# --- concurrency ---------------------------------------------------------------------------

def _build_slowly(directory: str, log: str, start: float) -> int:
    while time.time() < start:
        time.sleep(0.01)

    def build():
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        return {"prefix": torch.arange(1000.0)}

    tensors, written = store.get_or_build(Path(directory), "entry", {"k": 1}, build)
    assert torch.equal(tensors["prefix"], torch.arange(1000.0))
    return written


def test_concurrent_processes_build_an_entry_once(tmp_path):
    log = tmp_path / "builds.log"
    start = time.time() + 1.0
    context = multiprocessing.get_context("fork")  # no re-import of torch per process
    with context.Pool(3) as pool:
        written = pool.starmap(_build_slowly, [(str(tmp_path), str(log), start)] * 3)
    assert len(log.read_text().split()) == 1
    assert sorted(w > 0 for w in written) == [False, False, True]


def test_a_loaded_entry_survives_its_file_being_truncated(tmp_path):
    """Entries are read into memory: truncating the file under a running trial cannot fault it."""
    tensors, _ = store.get_or_build(tmp_path, "entry", {"k": 1}, lambda: {"prefix": torch.arange(100_000.0)})
    os.truncate(store.paths(tmp_path, "entry")[0], 10)
    assert torch.equal(tensors["prefix"], torch.arange(100_000.0))
    rebuilt, written = store.get_or_build(tmp_path, "entry", {"k": 1}, lambda: {"prefix": torch.arange(100_000.0)})
    assert written > 0 and torch.equal(rebuilt["prefix"], tensors["prefix"])
