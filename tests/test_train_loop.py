"""The plain training loop and ``run_training`` in one process (no Ray)."""

import math

import pytest
import torch
from torch import nn

from unitune.cli import main
from unitune.config import LossSpec, load_job
from unitune.eval import retrieval_metrics
from unitune.features import job_model
from unitune.models import load_model
from unitune.train import NonFiniteLossError, evaluate, load_checkpoint, run_training, train_one_epoch
from unitune.train.loop import ContrastiveStep
from unitune.train.worker import MODEL_DIR, enable_gradient_checkpointing

METRIC_KEYS = {"r1_i2t", "r5_i2t", "r10_i2t", "r1_t2i", "r5_t2i", "r10_t2i", "rsum",
               "medr_i2t", "meanr_i2t", "medr_t2i", "meanr_t2i"}
EPOCH_KEYS = {"epoch", "train_loss", "lr", "pos_sim", "hard_neg_sim", "violation_frac",
              "epoch_time_s", "samples_per_s", "train_time_s"} | METRIC_KEYS


def small_job(tmp_path, *extra):
    return load_job("jobs/demo.yaml", [
        "train.epochs=2", "data.synthetic.num_train=48", "data.synthetic.num_val=24",
        "data.synthetic.num_test=24", "train.batch_size=16", f"data.synthetic.cache_dir={tmp_path / 'data'}",
        "model.embed_dim=32", *extra,
    ])


class Recorder:
    """A report callback that keeps the metrics and loads each checkpoint during the call."""

    def __init__(self, stop_after=None):
        self.metrics, self.states, self.models, self.epoch0 = [], [], [], []
        self.stop_after = stop_after

    def __call__(self, metrics, directory):
        if metrics["epoch"] == 0:  # the untrained model's evaluation: no checkpoint
            assert directory is None
            self.epoch0.append(dict(metrics))
            return
        self.metrics.append(dict(metrics))
        self.states.append(load_checkpoint(directory))
        model_dir = f"{directory}/{MODEL_DIR}"
        self.models.append(load_model(model_dir) if (directory and __import__("os").path.isdir(model_dir)) else None)
        if self.stop_after == metrics["epoch"]:
            raise KeyboardInterrupt("simulated crash after the report")


def test_run_training_reports_every_epoch_with_checkpoint_and_model(tmp_path):
    job = small_job(tmp_path)
    rec = Recorder()
    last = run_training(job, report=rec, evaluate_test=True)
    assert [m["epoch"] for m in rec.metrics] == [1, 2]
    for m in rec.metrics:
        assert EPOCH_KEYS <= set(m)
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in m.values())
    assert {f"test_{k}" for k in METRIC_KEYS} <= set(rec.metrics[1])
    assert not any(k.startswith("test_") for k in rec.metrics[0])
    assert last == rec.metrics[-1]
    # Cumulative training time; cosine schedule ends at lr 0.
    assert 0 < rec.metrics[0]["train_time_s"] < rec.metrics[1]["train_time_s"]
    assert rec.metrics[1]["lr"] == pytest.approx(0.0, abs=1e-12)
    # 48 items x 3 captions = 144 pairs, 9 full batches of 16 per epoch.
    assert rec.states[0]["scheduler"]["last_epoch"] == 9
    # Epoch 0 first: validation metrics of the untrained model, no training keys.
    assert len(rec.epoch0) == 1 and METRIC_KEYS <= set(rec.epoch0[0]) and "train_loss" not in rec.epoch0[0]
    assert [s["epoch"] for s in rec.states] == [1, 2]
    # The model is saved with the last checkpoint only, and loads and embeds.
    assert rec.models[0] is None and rec.models[1] is not None
    model = rec.models[1]
    text = model.tokenize(["a red circle", "two blue squares"])
    emb = model.encode_text(text["input_ids"], text["attention_mask"])
    assert emb.shape == (2, 32)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))


def test_resume_from_checkpoint_continues_exactly(tmp_path):
    job = small_job(tmp_path)
    full = Recorder()
    run_training(job, report=full)
    crashed = Recorder(stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        run_training(job, report=crashed, checkpoint_dir=tmp_path / "ckpt")
    resumed = Recorder()
    run_training(job, report=resumed, resume_from=tmp_path / "ckpt")
    assert [m["epoch"] for m in resumed.metrics] == [2] and resumed.epoch0 == []
    # The checkpoint holds the trainable parameters (the tiny model has no BatchNorm).
    _, model = job_model(job)
    assert set(crashed.states[0]["trainable"]) == {n for n, p in model.named_parameters() if p.requires_grad}
    # Same weights, optimiser, schedule and per-epoch seeds: the same second epoch.
    for key in ("train_loss", "pos_sim", "rsum", "lr"):
        assert resumed.metrics[0][key] == pytest.approx(full.metrics[1][key], rel=1e-5), key


def test_learnable_gamma_is_trained_and_checkpointed(tmp_path):
    job = small_job(tmp_path, "loss.learnable_gamma=true", "loss.gamma=10", "optim.lr=0.01")
    rec = Recorder()
    run_training(job, report=rec)
    saved = [s["scale"]["log_gamma"].exp().item() for s in rec.states]
    used = [m["gamma"] for m in rec.metrics]  # gamma of each epoch's last step
    assert saved[0] != pytest.approx(10.0) and used[0] != pytest.approx(10.0)
    assert saved[0] != pytest.approx(saved[1])


class ToyEncoder(nn.Module):
    def __init__(self, nan=False):
        super().__init__()
        self.visual = nn.Linear(3, 4)
        self.text = nn.Embedding(20, 4)
        if nan:
            with torch.no_grad():
                self.visual.weight.fill_(float("nan"))

    def encode_visual(self, x):
        return nn.functional.normalize(self.visual(x), dim=-1)

    def encode_text(self, ids, mask):
        return nn.functional.normalize((self.text(ids) * mask[..., None]).sum(1), dim=-1)

    def tokenize(self, texts):
        ids = torch.tensor([[len(t) % 20, 1] for t in texts])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_diverged_model_raises_nonfinite_error():
    step = ContrastiveStep(ToyEncoder(nan=True))
    batch = {"visual": torch.randn(4, 3), "input_ids": torch.ones(4, 2, dtype=torch.long),
             "attention_mask": torch.ones(4, 2, dtype=torch.long), "positive_id": torch.arange(4)}
    opt = torch.optim.SGD(step.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    with pytest.raises(NonFiniteLossError, match="epoch 1"):
        train_one_epoch(step, [batch], opt, sched, LossSpec(), 1, device=torch.device("cpu"))


class ToySplit:
    """A RetrievalDataset stand-in: 5 items, 2 captions each."""

    captions = [f"caption {'x' * i}" for i in range(10)]
    caption_to_item = torch.arange(10) // 2
    item_groups = None

    def __init__(self):
        torch.manual_seed(0)
        self.visual = torch.randn(5, 3)

    def item_dataset(self):
        return [{"visual": v, "item_index": i} for i, v in enumerate(self.visual)]


def test_evaluate_matches_one_at_a_time_reference():
    torch.manual_seed(1)
    model, split = ToyEncoder(), ToySplit()
    got = evaluate(model, split, batch_size=2, device=torch.device("cpu"))
    with torch.no_grad():
        v = torch.cat([model.encode_visual(x[None]) for x in split.visual])
        t = torch.cat([model.encode_text(**{k: val for k, val in zip(("ids", "mask"), model.tokenize([c]).values())})
                       for c in split.captions])
    assert got == pytest.approx(retrieval_metrics(v @ t.T, split.caption_to_item))


def test_gradient_checkpointing_needs_a_supporting_tower(tmp_path):
    from unitune.errors import UserError
    from unitune.models import build_model

    job = small_job(tmp_path)
    assert enable_gradient_checkpointing(build_model(job.model.model_dump(), captions=["a b c"]), "tiny") >= 1
    with pytest.raises(UserError, match="train.grad_checkpointing"):
        enable_gradient_checkpointing(ToyEncoder(), "toy")


@pytest.mark.parametrize("content,needle", [
    (None, "no_such_job.yaml"),
    ("name: x\nloss: {margn: 0.2}\n", "margn"),
    ("name: x\ntrain: {epochs: -1}\n", "train.epochs"),
])
def test_bad_job_files_exit_2_with_one_line(tmp_path, capsys, content, needle):
    path = tmp_path / "no_such_job.yaml"
    if content is not None:
        path.write_text(content)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unitune: error:") and needle in err
    assert len(err.splitlines()) == 1, err


def test_epoch_0_is_the_untrained_model_evaluated(tmp_path):
    """Reference: evaluate() of the model the job builds, before any step."""
    job = small_job(tmp_path, "train.epochs=1")
    rec = Recorder()
    run_training(job, report=rec)
    _, model = job_model(job)
    from unitune.data import build_dataset
    val = build_dataset("val", **job.data.dataset_options(), transform=model.image_transform(train=False), train=False)
    expected = evaluate(model, val, batch_size=job.train.eval_batch_size)
    assert rec.epoch0[0]["epoch"] == 0 and rec.epoch0[0]["train_time_s"] == 0.0
    for key in METRIC_KEYS:
        assert rec.epoch0[0][key] == pytest.approx(expected[key], abs=1e-4), key
    assert [m["epoch"] for m in rec.metrics] == [1]  # train.epochs still counts training epochs


def test_checkpoint_leaves_out_frozen_weights_and_resume_checks_them(tmp_path):
    job = small_job(tmp_path, "model.freeze.visual_trainable_layers=1", "data.feature_cache=off")
    crashed = Recorder(stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        run_training(job, report=crashed, checkpoint_dir=tmp_path / "ckpt")
    _, model = job_model(job)
    state = crashed.states[0]
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and not frozen & set(state["trainable"])
    assert set(state["trainable"]) == {n for n, p in model.named_parameters() if p.requires_grad}
    other_seed = job.model_copy(update={"seed": 1})
    from unitune.errors import UserError
    with pytest.raises(UserError, match="frozen weights differ"):
        run_training(other_seed, report=Recorder(), resume_from=tmp_path / "ckpt")


def test_test_folds_report_the_mean_over_folds_of_consecutive_items(tmp_path):
    """data.test_folds (COCO 1K): the final test evaluation adds test_folds_<key>; reference:
    the trained model's embeddings, each fold's similarity block scored on its own, averaged."""
    job = small_job(tmp_path, "train.epochs=1", "data.test_folds=2")  # 24 test items: 2 folds of 12
    rec = Recorder()
    run_training(job, report=rec, evaluate_test=True)
    model = rec.models[-1]
    from unitune.data import build_dataset
    test = build_dataset("test", **job.data.dataset_options(), transform=model.image_transform(train=False), train=False)
    with torch.no_grad():
        v = torch.cat([model.encode_visual(test.load_visual(i, train=False)[None]) for i in range(len(test.items))])
        tokens = model.tokenize(test.captions)
        t = model.encode_text(tokens["input_ids"], tokens["attention_mask"])
    c2i, groups = test.caption_to_item, test.item_groups
    folds = []
    for lo in (0, 12):
        keep = (c2i >= lo) & (c2i < lo + 12)
        fold_groups = None if groups is None else groups[lo:lo + 12]
        folds.append(retrieval_metrics(v[lo:lo + 12] @ t[keep].T, c2i[keep] - lo, fold_groups))
    whole = retrieval_metrics(v @ t.T, c2i, groups)
    last = rec.metrics[-1]
    for key in METRIC_KEYS:
        assert last[f"test_folds_{key}"] == pytest.approx((folds[0][key] + folds[1][key]) / 2, abs=1e-3), key
        assert last[f"test_{key}"] == pytest.approx(whole[key], abs=1e-3), key
