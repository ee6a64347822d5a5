"""The study's bookkeeping in seconds: the searches and the final runs are replaced by
stand-ins that write the MLflow records the real ones write (tests/test_study.py runs the
real ones, slow tier), so that the tags, the resume and the report's numbers are checked
against values set by hand here."""

import csv
import io
import math
from types import SimpleNamespace

import pytest
import yaml

from unitune.cli import main
from unitune.config import apply_overrides
from unitune.tracking import Tracker
from test_study import write_job

# test RSUM of each final run, by hand: uni 200 + 4·seed; vlc 203 + 5·seed
TEST_RSUM = {("uni", 0): 200.0, ("uni", 1): 204.0, ("vlc", 0): 203.0, ("vlc", 1): 208.0}
TEST_RSUM.update({("uni", 2): 208.0, ("uni", 3): 212.0, ("vlc", 2): 213.0, ("vlc", 3): 218.0})
TEST_RSUM.update({("uni2", s): TEST_RSUM["uni", s] for s in range(4)})  # uni2: the same space as uni
TRIAL_BEST = {"t0": 90.0, "t1": 120.0}   # t1 is each search's best trial
# t1's lr is the uni space's upper bound (loguniform 1e-3..3e-3); vlc does not search lr
BOUND_WARNING = ("uni: best optim.lr=0.003 lies at the high end of its range [0.001, 0.003]: "
                 "widen optim.lr's high bound")


def ranks_for(final):
    """Per-query test ranks (100 items, one caption each) whose RSUM is ``final``: image→text
    20 ranked 1st, 30 3rd, 40 7th (R@1/5/10 = 20/50/90); text→image a 1st, c 7th with
    3a + c = final − 160."""
    a, c = divmod(int(final) - 160, 3)
    i2t = [1] * 20 + [3] * 30 + [7] * 40 + [50] * 10
    t2i = [1] * a + [7] * c + [50] * (100 - a - c)
    return i2t, t2i


def recall(final, k, direction):
    """A final run's test R@k (percent, 100 queries each way), counted from ranks_for."""
    i2t, t2i = ranks_for(final)
    return float(sum(r <= k for r in (i2t if direction == "i2t" else t2i)))


def ranks_csv(final):
    i2t, t2i = ranks_for(final)
    rows = ["direction,query,item_id,cluster,rank"]
    rows += [f"i2t,{q},{q},{q},{r}" for q, r in enumerate(i2t)]
    rows += [f"t2i,{q},{q},{q},{r}" for q, r in enumerate(t2i)]
    return "\n".join(rows) + "\n"


class Fakes:
    def __init__(self, interrupt_at=None):
        self.searches, self.trains, self.interrupt_at = [], [], interrupt_at

    def search(self, job, space, **kw):
        self.searches.append((space.source.stem, kw.get("resume", False)))
        tracker = Tracker(job.tracking.uri, job.tracking.artifact_location)
        search_id = f"{job.name}-{space.source.stem}-{len(self.searches)}"
        parent = tracker.start_run(job.experiment, search_id, tags={
            "unitune.search_id": search_id, "unitune.role": "search", "unitune.state": "running",
            **kw.get("tags", {})})
        tracker.log_params(parent, {"metric": space.metric, "mode": space.mode})
        base = apply_overrides(job, {**space.fixed, "train.epochs": 2})
        tracker.log_text(parent, yaml.safe_dump(base.model_dump(mode="json")), "search_job.yaml")
        for trial, best in TRIAL_BEST.items():
            run = tracker.start_run(job.experiment, f"{search_id}-{trial}", parent_run_id=parent, tags={
                "unitune.search_id": search_id, "unitune.trial_id": trial, "unitune.role": "trial",
                "unitune.state": "completed", "unitune.epochs_run": 2})
            tracker.log_params(run, {"optim.lr": 0.003 if trial == "t1" else 0.002})
            for epoch, value in enumerate([10.0, best / 2, best]):
                tracker.log_metrics(run, {"rsum": value}, step=epoch)
            tracker.end_run(run)
        tracker.set_tags(parent, {"unitune.state": "completed"})
        tracker.end_run(parent)
        return SimpleNamespace(parent_run_id=parent, search_id=search_id, interrupted=False)

    def train_runs(self, jobs, *, tags, log_model=False, out=print):
        results = []
        for job, job_tags in zip(jobs, tags):
            self.trains.append(job)
            if len(self.trains) == self.interrupt_at:
                raise KeyboardInterrupt
            family, seed = job.name.split("-")[1], job.seed
            tracker = Tracker(job.tracking.uri, job.tracking.artifact_location)
            run = tracker.start_run(job.experiment, f"train-{job.name}", tags={
                "unitune.kind": "train", "unitune.source_run": job.tracking.source_run, **job_tags})
            tracker.log_params(run, {"seed": job.seed})
            final = TEST_RSUM[(family, seed)]
            for epoch in range(job.train.epochs + 1):
                tracker.log_metrics(run, {"rsum": final * epoch / job.train.epochs, "train_time_s": 3.0 * epoch},
                                    step=epoch)
            tracker.log_metrics(run, {"test_rsum": final, **{f"test_r{k}_{d}": recall(final, k, d)
                                                            for k in (1, 5, 10) for d in ("i2t", "t2i")}},
                                step=job.train.epochs)
            tracker.log_text(run, ranks_csv(final), "test_ranks.csv")
            tracker.end_run(run)
            results.append({"run_id": run})
        return results


@pytest.fixture
def flow(tmp_path, monkeypatch):
    import unitune.study.runner as runner

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runner.cluster, "init_ray", lambda address, **kw: False)
    fakes = Fakes(interrupt_at=3)
    monkeypatch.setattr(runner, "run_search", fakes.search)
    monkeypatch.setattr("unitune.study.finals.train_runs", fakes.train_runs)
    job = write_job(tmp_path, final_epochs=3)
    return fakes, job, Tracker(f"sqlite:///{tmp_path}/mlruns.db")


def _runs(tracker, **tags):
    filt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return list(tracker.client.search_runs([tracker.experiment_id("st")], filter_string=filt, max_results=100))


def test_interrupted_study_resumes_without_rerunning_and_reports(flow, capsys):
    fakes, job, tracker = flow
    assert main(["study", job, "--quiet"]) == 130
    [study] = _runs(tracker, **{"unitune.role": "study"})
    assert study.info.status == "KILLED" and study.data.tags["unitune.state"] == "interrupted"
    assert fakes.searches == [("uni", False), ("vlc", False)]
    assert [j.name for j in fakes.trains] == ["st-uni-seed0", "st-uni-seed1", "st-vlc-seed0"]

    assert f"unitune: warning: {BOUND_WARNING}" in capsys.readouterr().err.splitlines()

    fakes.interrupt_at = None
    assert main(["study", job, "--quiet", "--resume"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("unitune: warning")]
    assert warnings == [f"unitune: warning: {BOUND_WARNING}"]   # the found search warns again, once
    assert fakes.searches == [("uni", False), ("vlc", False)]           # both searches were done
    assert [j.name for j in fakes.trains[3:]] == ["st-vlc-seed0", "st-vlc-seed1"]
    [study] = _runs(tracker, **{"unitune.role": "study"})
    study_id, run_id = study.data.tags["unitune.study_id"], study.info.run_id
    assert study.info.status == "FINISHED"

    # the final jobs: the best trial (t1) exported, seed s, the study's final epochs
    trials = {r.data.tags["unitune.search_id"]: r.info.run_id for r in _runs(tracker, **{"unitune.trial_id": "t1"})}
    for j in fakes.trains:
        assert j.train.epochs == 3 and j.optim.lr == 0.003 and j.seed == int(j.name[-1])
        assert j.tracking.source_run in trials.values() and j.experiment == "st"
    finals = _runs(tracker, **{"unitune.role": "final", "unitune.study_id": study_id})
    assert sorted((r.data.tags["unitune.family"], r.data.tags["unitune.seed"]) for r in finals) == [
        ("uni", "0"), ("uni", "1"), ("vlc", "0"), ("vlc", "1")]
    searches = _runs(tracker, **{"unitune.role": "search", "unitune.study_id": study_id})
    assert sorted(r.data.tags["unitune.family"] for r in searches) == ["uni", "vlc"]

    # the report, against the numbers set above: diffs 3 and 4 -> mean 3.5, std 0.7071,
    # t(0.975, 1) = 12.7062 -> the seed-only interval 3.5 ± 6.353
    rows = list(csv.DictReader(io.StringIO(tracker.read_text(run_id, "study.csv"))))
    assert [r["family"] for r in rows] == ["uni", "vlc"]
    assert float(rows[0]["test_mean"]) == 202.0 and float(rows[1]["test_mean"]) == 205.5
    assert float(rows[0]["search_best_val"]) == 120.0 and rows[0]["search_trial_epochs"] == "4"
    half = math.tan(0.475 * math.pi) * math.sqrt(0.5) / math.sqrt(2)
    assert float(rows[1]["diff_mean"]) == pytest.approx(3.5)
    assert float(rows[1]["diff_seed_only_ci_low"]) == pytest.approx(3.5 - half)
    # one comparison, one look (study.max_seeds = seeds): tested at 5%, its interval at that level
    assert float(rows[1]["diff_level"]) == pytest.approx(0.05) and rows[1]["resolved"] == "0"
    low, high = float(rows[1]["diff_ci_low"]), float(rows[1]["diff_ci_high"])
    assert low < 0 < high and (low + high) / 2 == pytest.approx(3.5)
    md = tracker.read_text(run_id, "study.md")
    assert f"vlc \u2212 uni: +3.5 RSUM, CI \u2212{-low:.1f} to +{high:.1f} (95.0%, 2 paired runs): not resolved" in md
    assert "- seeds 0\u20131: uni, vlc; then open: vlc" in md
    assert "Scope: each family was searched once" in md
    assert "| vlc **(best)** |" in md
    assert f"\n- {BOUND_WARNING}\n" in md
    # R@1/5/10 of both directions: means over the seeds, in the table and the CSV
    assert "| R@1/5/10 i\u2192t | R@1/5/10 t\u2192i |" in md
    uni = {(k, d): (recall(200.0, k, d) + recall(204.0, k, d)) / 2 for k in (1, 5, 10) for d in ("i2t", "t2i")}
    cells = " | ".join("/".join(f"{uni[k, d]:.1f}" for k in (1, 5, 10)) for d in ("i2t", "t2i"))
    assert f"| {cells} |" in md.split("\n| uni |")[1].split("\n")[0] + " |"
    assert {key: float(rows[0][f"test_r{key[0]}_{key[1]}"]) for key in uni} == pytest.approx(uni)
    # convergence of the final runs: target 40 reached at epoch 1 (rsum 200/3 > 40) by every run
    assert rows[0]["reached_target"] == "2" and float(rows[0]["epochs_to_target"]) == 1.0
    assert float(rows[0]["normalized_auc"]) == pytest.approx((200 / 3 + 400 / 3 + 200 + 204 / 3 + 408 / 3 + 204)
                                                             / 2 / (3 * 600))
    assert {f.path for f in tracker.client.list_artifacts(run_id, "plots")} == {"plots/curves.png",
                                                                                "plots/test.png"}
    assert tracker.get_metrics(run_id)["vlc.test_rsum_minus_uni"] == pytest.approx(3.5)
    assert study.data.tags["unitune.best_family"] == "vlc"


def test_resume_with_nothing_to_resume_is_refused(flow, capsys):
    _, job, _ = flow
    assert main(["study", job, "--quiet", "--resume"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("unitune: error")]
    assert len(errors) == 1 and "--resume: no interrupted study" in errors[0]


def test_open_comparisons_get_more_seeds_and_resume_continues_at_the_round(flow, tmp_path, capsys):
    fakes, job, tracker = flow
    (tmp_path / "uni2.yaml").write_text((tmp_path / "uni.yaml").read_text())
    spaces = ["--spaces", "uni.yaml,vlc.yaml,uni2.yaml", "study.max_seeds=4"]
    fakes.interrupt_at = 8  # the second run of round 2
    assert main(["study", job, "--quiet", *spaces]) == 130
    names = [j.name for j in fakes.trains]
    assert names[:6] == [f"st-{f}-seed{s}" for f in ("uni", "vlc", "uni2") for s in (0, 1)]
    assert names[6:] == ["st-uni-seed2", "st-uni-seed3"]  # uni2 is identical to uni: no more seeds
    fakes.interrupt_at = None
    assert main(["study", job, "--quiet", "--resume", *spaces]) == 0
    assert [j.name for j in fakes.trains[8:]] == ["st-uni-seed3", "st-vlc-seed2", "st-vlc-seed3"]
    [study] = _runs(tracker, **{"unitune.role": "study"})
    md = tracker.read_text(study.info.run_id, "study.md")
    assert "- seeds 0\u20131: uni, vlc, uni2; then open: vlc" in md
    assert "- seeds 2\u20133: uni, vlc; then open:" in md
    assert "uni2 \u2212 uni: 0.0 RSUM, identical outcomes on every query of every run (2 paired runs): no difference" in md
    rows = {r["family"]: r for r in csv.DictReader(io.StringIO(tracker.read_text(study.info.run_id, "study.csv")))}
    assert (rows["uni"]["seeds"], rows["vlc"]["seeds"], rows["uni2"]["seeds"]) == ("4", "4", "2")
    # the difference over the four paired seeds, by hand: 3, 4, 5, 6
    assert float(rows["vlc"]["diff_mean"]) == pytest.approx(4.5)
    # two comparisons, looks at 2 and 4 of 4 seeds: the last spends 1 - (2/4)^2 of alpha; Holm's
    # first step (vlc's p is below uni2's p = 1) at alpha / 2
    assert float(rows["vlc"]["diff_level"]) == pytest.approx(0.05 * 0.75 / 2)


def test_the_budget_stops_adding_rounds(flow, tmp_path):
    fakes, job, tracker = flow
    fakes.interrupt_at = None
    assert main(["study", job, "--quiet", "study.max_seeds=4", "study.budget_minutes=0.0001"]) == 0
    assert [j.name for j in fakes.trains] == [f"st-{f}-seed{s}" for f in ("uni", "vlc") for s in (0, 1)]


def hand_study(tmp_path, curves, test, target=40.0):
    """A study's plan and result built by hand: validation ``curves`` and ``test`` RSUM per
    (family, seed), for the report's functions."""
    from unitune.study.runner import FinalRun, SearchOutcome, StudyResult

    names = list(dict.fromkeys(f for f, _ in curves))
    families = [SimpleNamespace(name=n, path=tmp_path / f"{n}.yaml") for n in names]
    seeds = len(curves) // len(names)
    plan = SimpleNamespace(families=families, reference=families[0], metric="rsum", mode="max", target=target,
                           seeds=seeds, final_epochs=len(next(iter(curves.values()))) - 1, rounds=(seeds,),
                           max_seeds=seeds, search_repeats=1)
    finals = [FinalRun(f, s, f"run-{f}{s}", {"test_rsum": test[f, s]},
                       [{"epoch": e, "rsum": v, "train_time_s": float(e)} for e, v in enumerate(curve)])
              for (f, s), curve in curves.items()]
    searches = {f.name: [SearchOutcome(f.name, f"s-{f.name}", "p", "t1", "r", 1.0, {}, 4, 1.0)] for f in families}
    return plan, StudyResult("st-study-1", "run", searches, finals, 1.0)


def test_a_target_half_the_seeds_never_reached_reads_never(tmp_path):
    from unitune.study import report

    # target 100, budget 2 epochs: uni seed 0 reaches it at epoch 2, seed 1 never (budget + 1 = 3);
    # vlc reaches it at epochs 1 and 2
    curves = {("uni", 0): [10.0, 50.0, 100.0], ("uni", 1): [20.0, 60.0, 90.0],
              ("vlc", 0): [10.0, 120.0, 150.0], ("vlc", 1): [30.0, 80.0, 170.0]}
    test = {key: 100.0 + i for i, key in enumerate(curves)}
    plan, result = hand_study(tmp_path, curves, test, target=100.0)
    rows = report.family_rows(plan, result)
    assert (rows[0]["reached"], rows[0]["epochs_to_target"]) == (1, 3)   # not (2 + 3) / 2 = 2.5
    assert (rows[1]["reached"], rows[1]["epochs_to_target"]) == (2, 2)
    md = report.markdown(plan, result, rows)
    head = next(line.split(" | ") for line in md.splitlines() if line.startswith("| family |"))  # the main table
    at = head.index("reached target")
    main_table = md.split("| family |", 1)[1].split("\n\n")[0].splitlines()
    table = {line.split(" | ")[0].strip("| *(best)"): line.split(" | ") for line in main_table
             if line.startswith(("| uni", "| vlc"))}
    assert table["uni"][at:at + 2] == ["1/2", "never"] and table["vlc"][at:at + 2] == ["2/2", "2"]


def test_plots_show_mean_band_target_and_the_best_family(tmp_path, monkeypatch):
    """The two pictures, read back from the figures: validation curves (mean line, min–max
    band over seeds, target line, readable labels, the best family marked) and the test
    metric per family with its 95% interval (scipy's t interval)."""
    import matplotlib.figure
    from matplotlib.collections import PolyCollection
    from scipy import stats as sp

    from unitune.study import report

    figures = []
    real_savefig = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **kw: (figures.append(fig), real_savefig(fig, *a, **kw))[1])
    curves = {("uni", 0): [10.0, 50.0, 100.0], ("uni", 1): [20.0, 60.0, 110.0],
              ("vlc", 0): [10.0, 40.0, 150.0], ("vlc", 1): [30.0, 80.0, 170.0]}
    test = {("uni", 0): 100.0, ("uni", 1): 110.0, ("vlc", 0): 160.0, ("vlc", 1): 175.0}
    plan, result = hand_study(tmp_path, curves, test)
    rows = report.family_rows(plan, result)
    report.plots(plan, result, rows, tmp_path / "plots")
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["curves.png", "test.png"]
    curves_fig, test_fig = figures

    (ax,) = curves_fig.axes
    assert ax.get_ylabel() == "validation RSUM" and ax.get_xlabel().startswith("epoch")
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["uni", "vlc (best on test)", "target 40"]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["uni"].get_ydata()) == [15.0, 55.0, 105.0]          # mean over the 2 seeds
    assert list(lines["vlc (best on test)"].get_ydata()) == [20.0, 60.0, 160.0]
    assert lines["vlc (best on test)"].get_linewidth() > lines["uni"].get_linewidth()
    assert list(lines["target 40"].get_ydata()) == [40.0, 40.0]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2
    uni_band = bands[0].get_paths()[0].vertices
    assert {(x, y) for x, y in uni_band} >= {(0, 10.0), (1, 50.0), (2, 100.0), (0, 20.0), (1, 60.0), (2, 110.0)}

    (ax,) = test_fig.axes
    assert ax.get_ylabel() == "test RSUM"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["uni", "vlc\n(best)"]
    from matplotlib.collections import LineCollection

    segments = [seg for c in ax.collections if isinstance(c, LineCollection) for seg in c.get_segments()]
    for i, family in enumerate(("uni", "vlc")):
        values = [test[family, s] for s in (0, 1)]
        low, high = sp.t.interval(0.95, 1, loc=sum(values) / 2, scale=sp.sem(values))
        (bar,) = [seg for seg in segments if seg[0][0] == i]   # the error bar of family i
        assert sorted(y for _, y in bar) == [pytest.approx(low), pytest.approx(high)]
    markers = [line for line in ax.get_lines() if line.get_marker() == "o"]   # the means, not the caps
    assert [line.get_color() for line in markers] == ["tab:blue", "tab:red"]   # the best in red
