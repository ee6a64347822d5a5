"""``unitune eval``: a model measured without training."""

import torch

from unitune.cli import main
from unitune.config import load_job
from unitune.data import build_dataset
from unitune.models import build_model, save_model


def _table(text):
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()[2:] if line.strip()}


def test_eval_before_training_is_the_seeded_initial_model(tmp_path, capsys):
    overrides = [f"data.synthetic.cache_dir={tmp_path}/data", "data.synthetic.num_train=64",
                 "data.synthetic.num_val=32", "data.synthetic.num_test=32", "train.batch_size=16"]
    assert main(["eval", "jobs/demo.yaml", "--split", "val", *overrides]) == 0
    before = _table(capsys.readouterr().out)
    # The same model built by hand as the trainer builds it (seeded by job.seed), saved, measured.
    job = load_job("jobs/demo.yaml", overrides)
    torch.manual_seed(job.seed)
    model = build_model(job.model.model_dump(), captions=build_dataset("train", **job.data.dataset_options(), train=False).captions)
    save_model(model, tmp_path / "model")
    assert main(["eval", "jobs/demo.yaml", "--split", "val", "--model", str(tmp_path / "model"), *overrides]) == 0
    saved = _table(capsys.readouterr().out)
    assert saved == before
    recalls = [before[f"r{k}_{d}"] for k in (1, 5, 10) for d in ("i2t", "t2i")]
    assert abs(before["rsum"] - sum(recalls)) < 0.02 and 0 <= before["rsum"] <= 600
    assert before["r1_i2t"] <= before["r5_i2t"] <= before["r10_i2t"]


def test_eval_bad_model_or_run_exits_2(tmp_path, capsys):
    overrides = [f"data.synthetic.cache_dir={tmp_path}/data", f"tracking.uri=sqlite:///{tmp_path}/m.db"]
    assert main(["eval", "jobs/demo.yaml", "--model", str(tmp_path / "nothing"), *overrides]) == 2
    assert "no saved model" in capsys.readouterr().err
    assert main(["eval", "jobs/demo.yaml", "--run", "0123abcd", *overrides]) == 2
    assert "--run 0123abcd" in capsys.readouterr().err
