"""The preflight: data checked before the first trial, drop_last arithmetic against a real
DataLoader, resources against a cluster description."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

from unitune import preflight as pf
from unitune.config import load_job
from unitune.errors import UserError


def png(path, value=50):
    Image.fromarray(np.full((10, 10, 3), value, np.uint8)).save(path)
    return path.name


def job_with(tmp_path, rows, extra="", batch=2):
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "job.yaml").write_text(f"name: p\ntrain: {{batch_size: {batch}}}\n"
                                       f"data: {{format: manifest, annotations: m.jsonl{extra}}}\n")
    return load_job(tmp_path / "job.yaml")


def good_rows(tmp_path, n_train=4, captions=1):
    splits = ["train"] * n_train + ["val", "test"]
    return [{"image": png(tmp_path / f"g{k}.png", 10 * k), "captions": [f"c {k} {j}" for j in range(captions)],
             "id": k, "split": s} for k, s in enumerate(splits)]


@pytest.mark.parametrize("captions, batch, workers", [(493, 64, 1), (493, 64, 2), (100, 10, 4), (37, 8, 4),
                                                     (512, 64, 1), (10, 4, 3)])
def test_dropped_per_epoch_matches_distributed_loaders(captions, batch, workers):
    """Reference: what DistributedSampler(drop_last) + DataLoader(drop_last) really yield."""
    data = list(range(captions))
    seen = 0
    for rank in range(workers):
        sampler = DistributedSampler(data, num_replicas=workers, rank=rank, shuffle=True, seed=0, drop_last=True)
        loader = DataLoader(data, batch_size=batch // workers, sampler=sampler, drop_last=True)
        seen += sum(len(b) for b in loader)
    assert pf.dropped_per_epoch(captions, batch, workers) == captions - seen


def test_drop_last_warning_above_five_percent(tmp_path):
    rows = good_rows(tmp_path, n_train=3, captions=3)  # 9 train captions
    err = io.StringIO()
    pf.preflight(job_with(tmp_path, rows, batch=4), err=err)  # 9 - 8 = 1 dropped: 11%
    assert "train.batch_size: 4 leaves 1 of 9 train captions (11%) out of every epoch (drop_last" in err.getvalue()
    err = io.StringIO()
    pf.preflight(job_with(tmp_path, rows, batch=3), err=err)  # 0 dropped
    assert err.getvalue() == ""


def test_synthetic_drop_last_warning(tmp_path):
    (tmp_path / "job.yaml").write_text("name: s\ntrain: {batch_size: 64}\ndata: {synthetic: {num_train: 100, captions_per_item: 1}}\n")
    err = io.StringIO()
    assert pf.preflight(load_job(tmp_path / "job.yaml"), err=err) == []
    assert "leaves 36 of 100 train captions (36%)" in err.getvalue()


def test_counts_and_search_splits(tmp_path):
    rows = [r for r in good_rows(tmp_path, captions=2) if r["split"] != "test"]
    job = job_with(tmp_path, rows)
    checks = pf.preflight(job, splits=("train", "val"))  # a search reads no test split
    assert [(c.role, c.items, c.captions, c.skipped) for c in checks] == [("train", 4, 8, 0), ("val", 1, 2, 0)]
    with pytest.raises(UserError, match=r"split 'test' \(data\.splits\.test\) not found"):
        pf.preflight(job)


def test_first_bad_sample_in_file_order(tmp_path):
    rows = good_rows(tmp_path)
    (tmp_path / "bad_a.png").write_bytes(b"not an image at all")
    (tmp_path / "bad_b.png").write_bytes(b"not an image either")
    rows[1]["image"], rows[3]["image"] = "bad_a.png", "bad_b.png"
    with pytest.raises(UserError, match=r"bad_a\.png: cannot decode image .*m\.jsonl: line 2\)$"):
        pf.preflight(job_with(tmp_path, rows))


def test_skip_counts_what_will_be_skipped(tmp_path):
    rows = good_rows(tmp_path, n_train=5)
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "junk.png").write_bytes(b"junk" * 30)
    rows[0]["image"], rows[1]["image"] = "zero.png", "junk.png"
    rows[2]["captions"] = [""]
    err = io.StringIO()
    checks = pf.preflight(job_with(tmp_path, rows, ", on_bad_sample: skip"), err=err)
    assert (checks[0].items, checks[0].skipped) == (2, 4)  # the empty caption, then its captionless item
    assert "data.on_bad_sample: skip: 4 bad samples will be skipped (4 of split train;" in err.getvalue()


def test_sample_mode_decodes_a_sample_and_stats_every_file(tmp_path, monkeypatch):
    monkeypatch.setattr(pf, "SAMPLE_SIZE", 3)
    rows = good_rows(tmp_path, n_train=8)
    checks = pf.preflight(job_with(tmp_path, rows, ", preflight: sample"))
    assert [(c.items, c.decoded) for c in checks] == [(8, 3), (1, 1), (1, 1)]
    rows[7]["image"] = "absent.png"
    with pytest.raises(UserError, match="absent.png: image file not found"):
        pf.preflight(job_with(tmp_path, rows, ", preflight: sample"))


def test_off_checks_nothing(tmp_path):
    rows = good_rows(tmp_path)
    rows[0]["image"] = "absent.png"
    assert pf.preflight(job_with(tmp_path, rows, ", preflight: off")) == []


def test_progress_line_for_large_splits(tmp_path, monkeypatch):
    monkeypatch.setattr(pf, "PROGRESS_MIN", 4)
    monkeypatch.setattr(pf, "PROGRESS_EVERY_S", 0.0)
    err = io.StringIO()
    pf.preflight(job_with(tmp_path, good_rows(tmp_path, n_train=4)), err=err)
    assert "unitune: preflight: train split: 4/4 images decoded" in err.getvalue()


def test_real_emoji_data_passes(emoji_dir, monkeypatch):
    monkeypatch.setenv("UNITUNE_EMOJI_DIR", str(emoji_dir))
    from conftest import REPO

    checks = pf.preflight(load_job(REPO / "jobs" / "emoji_two_tower.yaml"), err=io.StringIO())
    assert [c.role for c in checks] == ["train", "val", "test"]
    assert all(c.items == c.decoded and c.skipped == 0 for c in checks)


# --- resources against the cluster -----------------------------------------------------------

def res_job(tmp_path, resources: str):
    (tmp_path / "job.yaml").write_text(f"name: r\nresources: {resources}\ntrain: {{batch_size: 64}}\n")
    return load_job(tmp_path / "job.yaml")


LAPTOP = {"CPU": 2.0, "memory": 8e9, "object_store_memory": 2e9}


@pytest.mark.parametrize("resources, fragment", [
    ("{use_gpu: true}", "resources.use_gpu: true, but the Ray cluster has no GPU (it has 2 CPU, 0 GPU)"),
    ("{cpu_per_worker: 1000}", "resources.cpu_per_worker: a trial needs 1000 CPU (1 workers x 1000); the Ray cluster has 2 CPU"),
    ("{num_workers: 64}", "resources.num_workers: a trial needs 64 CPU (64 workers x 1); the Ray cluster has 2 CPU"),
])
def test_trial_larger_than_the_cluster(tmp_path, resources, fragment):
    job = res_job(tmp_path, resources)
    with pytest.raises(UserError, match="job.yaml: ") as info:
        pf.check_resources(job, LAPTOP)
    assert fragment in str(info.value)
    warnings = pf.check_resources(job, LAPTOP, autoscaling=True)
    assert len(warnings) == 1 and fragment in warnings[0] and "autoscaler" in warnings[0]


def test_worker_must_fit_on_one_node(tmp_path):
    job = res_job(tmp_path, "{cpu_per_worker: 4}")
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": True, "Resources": {"CPU": 2.0}},
             {"Alive": False, "Resources": {"CPU": 8.0}}]
    with pytest.raises(UserError, match=r"one worker needs 4 CPU; the largest of the cluster's 2 nodes has 2"):
        pf.check_resources(job, {"CPU": 4.0}, nodes)
    assert pf.check_resources(job, {"CPU": 8.0}, [{"Alive": True, "Resources": {"CPU": 8.0}}]) == []


def test_fitting_trial_passes(tmp_path):
    assert pf.check_resources(res_job(tmp_path, "{num_workers: 2}"), LAPTOP) == []
    gpu = res_job(tmp_path, "{use_gpu: true, gpu_per_worker: 0.5, num_workers: 2}")
    assert pf.check_resources(gpu, {"CPU": 16.0, "GPU": 1.0}) == []
    with pytest.raises(UserError, match=r"resources.num_workers: a trial needs 2 GPU \(2 workers x 1\); the Ray cluster has 1 GPU"):
        pf.check_resources(res_job(tmp_path, "{use_gpu: true, num_workers: 2}"), {"CPU": 16.0, "GPU": 1.0})


def test_config_knows_the_tiny_presets():
    from unitune.config.job import TINY_PRESETS
    from unitune.models.tiny import TINY_PRESETS as BUILT

    assert set(TINY_PRESETS) == set(BUILT)


def test_image_check_accepts_every_mode_it_loads(tmp_path):
    for mode in ("RGB", "L", "RGBA", "P", "1"):
        Image.new(mode, (9, 7)).save(tmp_path / f"{mode}.png")
        pf.check_image(str(tmp_path / f"{mode}.png"))
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "x.jpg", quality=90)
    pf.check_image(str(tmp_path / "x.jpg"))
