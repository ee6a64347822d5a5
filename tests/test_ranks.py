"""Per-query ranks (``unitune.ranks``): the table a final run logs as ``test_ranks.csv``
recomputes the run's test metrics exactly; ``unitune eval --ranks`` writes the same table."""

import csv
import shutil
import statistics

import pytest

from unitune.cli import main
from unitune.config import load_job
from unitune.ranks import FILE, QueryRanks
from unitune.train import run_training


def small(tmp_path):
    return [f"data.synthetic.cache_dir={tmp_path}/data", "data.synthetic.num_train=64",
            "data.synthetic.num_val=32", "data.synthetic.num_test=40", "train.batch_size=16",
            "train.epochs=1", f"tracking.uri=sqlite:///{tmp_path}/m.db"]


def plain_metrics(path):
    """R@K, RSUM and mean rank from the CSV rows with a plain loop (not unitune's code)."""
    rows = list(csv.DictReader(open(path)))
    out = {}
    for direction in ("i2t", "t2i"):
        ranks = [int(r["rank"]) for r in rows if r["direction"] == direction]
        for k in (1, 5, 10):
            out[f"r{k}_{direction}"] = 100.0 * sum(1 for x in ranks if x <= k) / len(ranks)
        out[f"meanr_{direction}"] = statistics.fmean(ranks)
    out["rsum"] = sum(out[f"r{k}_{d}"] for k in (1, 5, 10) for d in ("i2t", "t2i"))
    return out, rows


def test_final_ranks_recompute_the_logged_test_metrics(tmp_path):
    kept = tmp_path / "kept.csv"

    def report(metrics, directory):
        if directory is not None and "test_rsum" in metrics:
            shutil.copy(f"{directory}/{FILE}", kept)  # the checkpoint directory is temporary

    job = load_job("jobs/demo.yaml", small(tmp_path))
    last = run_training(job, report=report, evaluate_test=True)
    recomputed, rows = plain_metrics(kept)
    for key, value in recomputed.items():
        assert value == pytest.approx(last[f"test_{key}"], abs=1e-9), key
    # one row per test item (i2t) and per test caption (t2i), numbered in the split's order
    i2t = [r for r in rows if r["direction"] == "i2t"]
    t2i = [r for r in rows if r["direction"] == "t2i"]
    assert [int(r["query"]) for r in i2t] == list(range(40))
    assert [int(r["query"]) for r in t2i] == list(range(len(t2i))) and len(t2i) >= 40
    back = QueryRanks.read_csv(kept)
    assert back.metrics()["rsum"] == pytest.approx(last["test_rsum"], abs=1e-9)


def test_eval_writes_the_ranks_of_its_split(tmp_path, capsys):
    out = tmp_path / "val_ranks.csv"
    assert main(["eval", "jobs/demo.yaml", "--split", "val", "--ranks", str(out), *small(tmp_path)]) == 0
    printed = {line.split()[0]: float(line.split()[1]) for line in capsys.readouterr().out.splitlines()[2:]
               if line.strip() and not line.startswith("per-query")}
    recomputed, rows = plain_metrics(out)
    for key in ("rsum", "r1_i2t", "r10_t2i", "meanr_i2t"):
        assert recomputed[key] == pytest.approx(printed[key], abs=0.006), key  # printed with 2 decimals
    assert sum(r["direction"] == "i2t" for r in rows) == 32


def test_eval_ranks_to_an_unwritable_place_is_refused_first(tmp_path, capsys):
    assert main(["eval", "jobs/demo.yaml", "--ranks", str(tmp_path / "no" / "r.csv"), *small(tmp_path)]) == 2
    assert "--ranks" in capsys.readouterr().err


def test_read_refuses_a_foreign_or_reordered_table(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a per-query ranks table"):
        QueryRanks.read_csv(bad)
    bad.write_text("direction,query,item_id,cluster,rank\ni2t,1,5,0,1\ni2t,0,6,1,1\n")
    with pytest.raises(ValueError, match="in order"):
        QueryRanks.read_csv(bad)
    bad.write_text("direction,query,item_id,cluster,rank\ni2t,0,5,0,1\nt2i,0,9,0,1\n")
    with pytest.raises(ValueError, match="item 9"):
        QueryRanks.read_csv(bad)
