"""``unitune study`` end to end on the demo's synthetic data with tiny budgets (2 families x
2 trials x 2 seeds x 2 epochs), its resume, the frozen family, and bad input."""

import csv
import io
import json

import pytest
import yaml

from unitune.cli import main
from unitune.config import apply_overrides, load_job, load_space
from unitune.models import build_model
from unitune.tracking import Tracker

SPACE = {"metric": "rsum", "mode": "max", "num_trials": 2, "max_concurrent": 1, "seed": 0, "target": 40,
         "asha": {"grace_period": 1, "reduction_factor": 2}}
SPACES = {
    "uni": {**SPACE, "params": {"loss.margin": {"type": "uniform", "low": 0.0, "high": 0.3},
                                "optim.lr": {"type": "loguniform", "low": 1e-3, "high": 3e-3}},
            "fixed": {"loss.mining": "all"}},
    "vlc": {**SPACE, "params": {"loss.gamma": {"type": "loguniform", "low": 10.0, "high": 30.0}},
            "fixed": {"loss.margin": 0.0, "loss.mining": "all"}},
}


def write_job(root, **study):
    for name, space in SPACES.items():
        (root / f"{name}.yaml").write_text(yaml.safe_dump(space))
    job = {
        "name": "st",
        "data": {"synthetic": {"num_train": 64, "num_val": 32, "num_test": 32, "image_size": 16,
                               "cache_dir": str(root / "data")}},
        "model": {"embed_dim": 32},
        "train": {"epochs": 2, "final_epochs": 2, "batch_size": 16, "eval_batch_size": 64},
        "tracking": {"uri": f"sqlite:///{root}/mlruns.db", "artifact_location": str(root / "art")},
        "study": {"spaces": ["uni.yaml", "vlc.yaml"], "seeds": 2, "max_seeds": 2, **study},
    }
    (root / "job.yaml").write_text(yaml.safe_dump(job))
    return str(root / "job.yaml")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A study interrupted at its third final run (Ctrl-C), then resumed.

    Real searches (Ray Tune) and real final runs (``unitune.train.runs.train_runs``), hence
    the slow tier; ``tests/test_study_flow.py`` checks the same bookkeeping in seconds."""
    import unitune.study.runner as runner

    root = tmp_path_factory.mktemp("study")
    import unitune.study.finals as finals

    calls = {"search": [], "train": []}
    real_search, real_train_runs = runner.run_search, finals.train_runs
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        job = write_job(root)

        def search(job, space, **kw):
            calls["search"].append((space.source.stem, kw.get("resume", False)))
            return real_search(job, space, **kw)

        def train_runs(jobs, *, tags, **kw):
            results = []
            for job, job_tags in zip(jobs, tags):
                calls["train"].append(job.name)
                if len(calls["train"]) == 3 and not calls.get("resumed"):
                    raise KeyboardInterrupt
                results += real_train_runs([job], tags=[job_tags], **kw)
            return results

        mp.setattr(runner, "run_search", search)
        mp.setattr(finals, "train_runs", train_runs)
        assert main(["study", job, "--quiet"]) == 130
        first = {k: list(v) for k, v in calls.items()}
        calls["resumed"] = True
        assert main(["study", job, "--quiet", "--resume"]) == 0
    tracker = Tracker(f"sqlite:///{root}/mlruns.db")
    yield tracker, first, calls, root


def _runs(tracker, **tags):
    exp = tracker.experiment_id("st")
    filt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return list(tracker.client.search_runs([exp], filter_string=filt, max_results=1000))


@pytest.mark.slow
def test_searches_and_final_runs_are_linked_by_tags(study):
    tracker, _, _, _ = study
    [study_run] = _runs(tracker, **{"unitune.role": "study"})
    study_id = study_run.data.tags["unitune.study_id"]
    assert study_run.info.status == "FINISHED" and study_run.data.tags["unitune.state"] == "completed"
    searches = _runs(tracker, **{"unitune.role": "search", "unitune.study_id": study_id})
    assert sorted(r.data.tags["unitune.family"] for r in searches) == ["uni", "vlc"]
    finals = _runs(tracker, **{"unitune.role": "final", "unitune.study_id": study_id})
    assert sorted((r.data.tags["unitune.family"], r.data.tags["unitune.seed"]) for r in finals) == [
        ("uni", "0"), ("uni", "1"), ("vlc", "0"), ("vlc", "1")]
    for search in searches:
        family = search.data.tags["unitune.family"]
        trials = _runs(tracker, **{"unitune.search_id": search.data.tags["unitune.search_id"],
                                   "unitune.role": "trial"})
        assert len(trials) == 2
        best = max(trials, key=lambda t: max(v for _, v in tracker.metric_history(t.info.run_id, "rsum")))
        mine = [r for r in finals if r.data.tags["unitune.family"] == family]
        assert {r.data.tags["unitune.source_run"] for r in mine} == {best.info.run_id}
        assert all(r.info.status == "FINISHED" and "test_rsum" in r.data.metrics for r in mine)
        assert {tracker.client.get_run(r.info.run_id).data.params["seed"] for r in mine} == {"0", "1"}


@pytest.mark.slow
def test_resume_does_not_rerun_finished_parts(study):
    _, first, calls, _ = study
    assert first["search"] == [("uni", False), ("vlc", False)]
    assert first["train"] == ["st-uni-seed0", "st-uni-seed1", "st-vlc-seed0"]  # Ctrl-C in the third
    assert calls["search"] == first["search"]                                    # no search again
    assert calls["train"][3:] == ["st-vlc-seed0", "st-vlc-seed1"]                 # only the missing runs


@pytest.mark.slow
def test_report_rows_artifacts_and_headline_metrics(study):
    tracker, _, _, _ = study
    [run] = _runs(tracker, **{"unitune.role": "study"})
    run_id = run.info.run_id
    rows = list(csv.DictReader(io.StringIO(tracker.read_text(run_id, "study.csv"))))
    assert [r["family"] for r in rows] == ["uni", "vlc"]
    assert all(r["seeds"] == "2" for r in rows)
    assert rows[0]["diff_mean"] == "" and rows[1]["diff_mean"] != ""
    runs = list(csv.DictReader(io.StringIO(tracker.read_text(run_id, "runs.csv"))))
    finals = {(r["family"], r["seed"]): float(r["test_rsum"]) for r in runs}
    assert len(finals) == 4
    mean_uni = (finals[("uni", "0")] + finals[("uni", "1")]) / 2
    assert float(rows[0]["test_mean"]) == pytest.approx(mean_uni)
    diff = ((finals[("vlc", "0")] - finals[("uni", "0")]) + (finals[("vlc", "1")] - finals[("uni", "1")])) / 2
    assert float(rows[1]["diff_mean"]) == pytest.approx(diff)
    md = tracker.read_text(run_id, "study.md")
    assert "| uni" in md and "| vlc" in md and "vlc \u2212 uni: " in md and "2 paired runs" in md
    files = {f.path for f in tracker.client.list_artifacts(run_id, "plots")}
    assert files == {"plots/curves.png", "plots/test.png"}
    metrics = tracker.get_metrics(run_id)
    assert metrics["vlc.test_rsum_minus_uni"] == pytest.approx(diff)
    assert metrics["uni.test_rsum_mean"] == pytest.approx(mean_uni)


def test_frozen_family_trains_only_the_projections(tmp_path):
    job = load_job("jobs/demo.yaml", [f"data.synthetic.cache_dir={tmp_path}"])
    frozen = apply_overrides(job, load_space("search_spaces/frozen.yaml", job).fixed)
    model = build_model(frozen.model.model_dump(), captions=["a red square", "a blue circle"])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    clip = model.clip
    projections = (clip.visual_projection.in_features * clip.visual_projection.out_features
                   + clip.text_projection.in_features * clip.text_projection.out_features)
    assert trainable == projections > 0
    assert sum(p.numel() for p in model.parameters()) > 5 * projections
    full = build_model(job.model.model_dump(), captions=["a red square", "a blue circle"])
    assert sum(p.numel() for p in full.parameters() if p.requires_grad) > 5 * projections


def _error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def test_bad_input_exits_2_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = write_job(tmp_path)
    code, err = _error(capsys, ["study", job, "--spaces", "uni.yaml,nope.yaml"])
    assert code == 2 and "nope.yaml" in err and len(err.splitlines()) == 1
    code, err = _error(capsys, ["study", job, "--seeds", "0"])
    assert code == 2 and "--seeds" in err and len(err.splitlines()) == 1
    (tmp_path / "r1.yaml").write_text(yaml.safe_dump({**SPACES["vlc"], "metric": "r1_i2t"}))
    code, err = _error(capsys, ["study", job, "--spaces", "uni.yaml,r1.yaml"])
    assert code == 2 and "r1.yaml: metric" in err and len(err.splitlines()) == 1
    (tmp_path / "more.yaml").write_text(yaml.safe_dump({**SPACES["vlc"], "seed": 3}))
    code, err = _error(capsys, ["study", job, "--spaces", "uni.yaml,more.yaml"])
    assert code == 2 and "more.yaml: seed" in err
    no_spaces = write_job(tmp_path, spaces=[])
    code, err = _error(capsys, ["study", no_spaces])
    assert code == 2 and "study.spaces" in err
    # the sequential seeds and the per-query comparison
    code, err = _error(capsys, ["study", write_job(tmp_path, max_seeds=1)])
    assert code == 2 and "max_seeds" in err and len(err.splitlines()) == 1
    code, err = _error(capsys, ["study", write_job(tmp_path, max_seeds=4), "--seeds", "5"])
    assert code == 2 and "--seeds: 5 is above study.max_seeds (4)" in err and len(err.splitlines()) == 1
    code, err = _error(capsys, ["study", write_job(tmp_path, metric="medr_i2t")])
    assert code == 2 and "medr_i2t is not a mean over test queries" in err and len(err.splitlines()) == 1
    for bad in ("search_repeats=0", "budget_minutes=0", "budget_minutes=nan"):
        code, err = _error(capsys, ["study", write_job(tmp_path), f"study.{bad}"])
        assert code == 2 and f"study.{bad.split('=')[0]}" in err and len(err.splitlines()) == 1, bad


def test_job_without_test_split_is_refused(tmp_path, capsys, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    write_job(tmp_path)
    images = []
    for i, split in enumerate(["train", "train", "val"]):
        Image.new("RGB", (8, 8), (i * 80, 0, 0)).save(tmp_path / f"{i}.png")
        images.append({"filename": f"{i}.png", "split": split, "imgid": i, "sentences": [{"raw": f"image {i}"}]})
    (tmp_path / "karpathy.json").write_text(json.dumps({"images": images}))
    job = write_job(tmp_path)
    code, err = _error(capsys, ["study", job, "data.format=karpathy", "data.annotations=karpathy.json",
                                "train.batch_size=2"])
    assert code == 2 and "data.splits.test" in err and "not found" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_one_space_given_twice_with_search_repeats_claims_no_difference(tmp_path, monkeypatch):
    """Two identical families (the uni space under two names), each searched twice with sampler
    seeds 0 and 1, every search's best trained with seeds 0 and 1: real searches and runs."""
    monkeypatch.chdir(tmp_path)
    job = write_job(tmp_path, search_repeats=2)
    (tmp_path / "uni_copy.yaml").write_text((tmp_path / "uni.yaml").read_text())
    assert main(["study", job, "--quiet", "--spaces", "uni.yaml,uni_copy.yaml"]) == 0
    tracker = Tracker(f"sqlite:///{tmp_path}/mlruns.db")
    [run] = _runs(tracker, **{"unitune.role": "study"})
    rows = {r["family"]: r for r in csv.DictReader(io.StringIO(tracker.read_text(run.info.run_id, "study.csv")))}
    assert rows["uni_copy"]["resolved"] == "0"
    assert rows["uni_copy"]["search_repeats"] == "2" and rows["uni_copy"]["runs"] == "4"
    md = tracker.read_text(run.info.run_id, "study.md")
    assert "searched 2 times" in md and "resolved," not in md
    # the two searches of a family used different sampler seeds: different trials
    searches = _runs(tracker, **{"unitune.role": "search", "unitune.family": "uni"})
    assert sorted(r.data.tags["unitune.search_repeat"] for r in searches) == ["0", "1"]
    tried = []
    for search in searches:
        trials = _runs(tracker, **{"unitune.search_id": search.data.tags["unitune.search_id"], "unitune.role": "trial"})
        tried.append(sorted(t.data.params["loss.margin"] for t in trials))
    assert tried[0] != tried[1]


def test_the_study_block_is_not_part_of_a_search_key(tmp_path, monkeypatch):
    # `unitune study JOB --resume study.budget_minutes=90` continues the interrupted search
    from unitune.search.driver import search_key

    monkeypatch.chdir(tmp_path)
    job = load_job(write_job(tmp_path))
    space = load_space(tmp_path / "uni.yaml", job)
    more = apply_overrides(job, {"study.budget_minutes": 90, "study.max_seeds": 6, "study.search_repeats": 2})
    assert search_key(more, space) == search_key(job, space)
    assert search_key(apply_overrides(job, {"train.epochs": 3}), space) != search_key(job, space)
