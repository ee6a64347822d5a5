"""The search's plots as people read them: legible legends with the terminal's trial names,
the best trial marked, axes named by the metric (fast; a stub store, a small Optuna study)."""

import random
from types import SimpleNamespace

import matplotlib
import optuna
import pytest
from matplotlib.figure import Figure

from unitune.search import report

matplotlib.use("Agg")


@pytest.fixture
def saved(monkeypatch):
    """Every figure the code saves, kept open for the assertions."""
    figures = []

    def keep(self, path, **kwargs):
        self.canvas.draw()
        figures.append(self)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_text()]


class _Store:
    """A tracker stub: per-epoch rsum histories by run id."""

    def __init__(self, curves):
        self.curves = curves

    def metric_history(self, run_id, key):
        return [(e, v) for e, v in enumerate(self.curves[run_id])] if key == "rsum" else []


def test_curves_name_trials_as_the_terminal_and_mark_the_best(tmp_path, saved):
    curves = {"r0": [30, 120], "r1": [30, 200, 310, 350], "r2": [30, 90, 140]}
    tracker = _Store(curves)
    setup = SimpleNamespace(tracker=tracker, metric="rsum", mode="max", target=150, search_id="demo-x")
    trials = [{"run_id": "r0", "label": "t00", "state": "stopped_by_asha"},
              {"run_id": "r1", "label": "t01", "state": "completed"},
              {"run_id": "r2", "label": "t02", "state": "stopped_by_asha"}]
    report._curves_plot(setup, {"trials": trials, "best": trials[1]}, tmp_path / "plots" / "curves.png")
    (fig,) = saved
    ax = fig.axes[0]
    legend = ax.get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    assert "t01 (completed), best" in labels and "t00 (stopped by ASHA)" in labels
    assert "best: t01 rsum 350 at epoch 3" in labels and "target 150" in labels
    assert min(t.get_fontsize() for t in legend.get_texts()) >= 9
    assert ax.get_ylabel() == "validation rsum"
    stars = [line for line in ax.get_lines() if line.get_marker() == "*"]
    assert len(stars) == 1 and list(stars[0].get_xdata()) == [3] and list(stars[0].get_ydata()) == [350]
    assert not any(t.startswith("trial_") or "Objective Value" in t for t in _texts(fig))


@pytest.fixture
def study_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    rng = random.Random(0)
    dists = {"loss.margin": optuna.distributions.FloatDistribution(0, 0.4),
             "loss.gamma": optuna.distributions.FloatDistribution(5, 100, log=True),
             "loss.mining": optuna.distributions.CategoricalDistribution(["all", "hardest", "topk"]),
             "loss.warmup_epochs": optuna.distributions.IntDistribution(0, 2),
             "optim.lr": optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True)}
    for _ in range(8):
        trial = study.ask(dists)
        study.tell(trial, 100 + 300 * trial.params["loss.margin"] + 50 * rng.random())
    return url


def test_optuna_plots_name_the_metric_and_spread_their_labels(tmp_path, study_url, saved):
    report._optuna_plots(SimpleNamespace(search_id="s", metric="rsum", mode="max"), study_url, tmp_path)
    assert len(saved) == 2
    parallel, importance = saved
    for fig in saved:
        texts = _texts(fig)
        assert not any("Objective Value" in t for t in texts)
        assert any("rsum" in t for t in texts)
    ax = parallel.axes[0]
    ticks = [t for t in ax.get_xticklabels() if t.get_text()]
    assert [t.get_text() for t in ticks][0] == "rsum" and len(ticks) == 6
    assert all(t.get_rotation() > 0 and t.get_fontsize() >= 9 for t in ticks)
    # No two parameter names overlap on the page.
    boxes = [t.get_window_extent() for t in ticks]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert "importance for rsum" in importance.axes[0].get_xlabel()
