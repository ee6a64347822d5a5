"""The trained model in MLflow's model registry: ``unitune train --register NAME`` ->
``models:/NAME/1`` -> embeddings of images and captions, through the README's example run as
written, checked against a cosine similarity computed here in numpy from the PyTorch model.

Ray Train is replaced by the same per-epoch loop run in this process (``run_training``, each
report handed to the run's callbacks as Ray Train's controller does), so the test stays in the
default tier; ``tests/test_train_ray.py`` covers ``unitune train`` on a real Ray.
"""

import contextlib
import io
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from unitune.cli import main
from unitune.train import run as train_run
from unitune.train import run_training

REPO = Path(__file__).resolve().parents[1]
NAME = "demo-retrieval"   # the README's name
STORE = "sqlite:///mlruns.db"   # the demo job's store, in the test's working directory
# A tiny model that learns the pairs in seconds: 64 training items, 12 epochs (22 of the first
# 32 training images ranked their own caption first when this was written).
SMALL = ["train.epochs=12", "data.synthetic.num_train=64", "data.synthetic.num_val=16",
         "data.synthetic.num_test=16", "train.batch_size=16", "model.embed_dim=32"]


class NoProgress:
    """``StepProgress``'s stand-in: the in-epoch progress display reads a Ray actor."""

    reporter = None

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


class InProcessTrainer:
    """``build_trainer``'s stand-in: ``fit()`` runs the job's loop here and returns what a
    Ray Train result offers ``unitune train`` (``metrics``, ``checkpoint.as_directory()``)."""

    def __init__(self, job, callbacks, directory: Path):
        self.job, self.callbacks, self.directory = job, callbacks or [], directory

    def fit(self):
        last = {}

        def report(metrics, checkpoint):
            for callback in self.callbacks:
                callback.after_report(None, [metrics], None)
            last.clear()
            last.update(metrics)

        run_training(self.job, report=report, checkpoint_dir=self.directory, evaluate_test=True)
        checkpoint = SimpleNamespace(as_directory=lambda: contextlib.nullcontext(str(self.directory)))
        return SimpleNamespace(metrics=dict(last), checkpoint=checkpoint)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``unitune train jobs/demo.yaml --register NAME`` (small) with a fresh directory as the
    working directory, as a user runs it after ``make demo``; -> (directory, stdout). The
    working directory stays there for the module's tests."""
    directory = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(directory)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setattr(train_run, "init_ray", lambda address, **kwargs: False)
        mp.setattr(train_run, "check_fits", lambda job, address: None)
        mp.setattr("unitune.progress.StepProgress", NoProgress)
        mp.setattr(train_run, "build_trainer", lambda job, *, callbacks=None, **kwargs:
                   InProcessTrainer(job, callbacks, directory / "ckpt"))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["train", str(REPO / "jobs/demo.yaml"), "--register", NAME, *SMALL]) == 0
        yield directory, out.getvalue()


def readme_example() -> str:
    """The code block the README marks as run by this test."""
    text = (REPO / "README.md").read_text()
    marker = text.index("<!-- tests/test_model_registry.py runs the next code block -->")
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, marker)
    return match.group(1)


def torch_embeddings(model, image_files, captions):
    """Embeddings computed the PyTorch way (the model's own transform, tokenizer and encoders)."""
    transform = model.image_transform(train=False)
    with torch.no_grad():
        pixels = torch.stack([transform(Image.open(f).convert("RGB")) for f in image_files])
        tokens = model.tokenize(captions)
        return (model.encode_image(pixels).numpy(),
                model.encode_text(tokens["input_ids"], tokens["attention_mask"]).numpy())


def cosine(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def test_registered_model_embeds_and_ranks(trained, capsys):
    import mlflow
    from mlflow import MlflowClient

    from unitune.models import load_model
    from unitune.tracking import Tracker

    directory, stdout = trained
    assert f"model: models:/{NAME}/1" in stdout
    tracker = Tracker(STORE)
    (run,) = tracker.client.search_runs([tracker.experiment_id("demo")])
    assert run.info.status == "FINISHED"
    # Registered as version 1, from this run; the run's model is its MLflow model `model`, in
    # the run's experiment, and the weights are stored once (no second, plain copy).
    client = MlflowClient(tracking_uri=tracker.uri)
    version = client.get_model_version(NAME, "1")
    assert version.run_id == run.info.run_id
    logged = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert [(m.name, m.source_run_id) for m in logged] == [("model", run.info.run_id)]
    assert len(list((directory / "mlartifacts").rglob("model.pt"))) == 1
    assert not (directory / "mlruns").exists()
    mlflow.set_tracking_uri(tracker.uri)
    try:
        info = mlflow.models.get_model_info(f"models:/{NAME}/1")
        assert info.signature.inputs.input_names() == ["image", "caption"]
        assert info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 32)

        # The README's example, as written, from the directory where training ran.
        namespace = {}
        capsys.readouterr()
        exec(compile(readme_example(), "README.md", "exec"), namespace)
        printed = capsys.readouterr().out
    finally:
        mlflow.set_tracking_uri(None)

    # Reference: the PyTorch object of the same registered version, embedded by hand.
    torch_model = load_model(f"models:/{NAME}/1", tracking_uri=tracker.uri).eval()
    manifest = namespace["manifest"]
    rows = namespace["rows"]
    image_files = [manifest.parent / row["image"] for row in rows]
    ref_images, ref_texts = torch_embeddings(torch_model, image_files, namespace["captions"])
    np.testing.assert_allclose(namespace["image_emb"], ref_images, atol=1e-5)
    np.testing.assert_allclose(namespace["text_emb"], ref_texts, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(namespace["image_emb"], axis=1), 1.0, atol=1e-5)
    sim = cosine(ref_images, ref_texts)
    assert (namespace["ranking"][:, 0] == sim.argmax(axis=1)).all()
    hits = float(np.mean(sim.argmax(axis=1) == np.arange(len(rows))))
    assert f"{hits:.0%} of the images rank their own caption first" in printed

    # The same weights through the run's URI (the URI forms load one model).
    artifact_model = load_model(f"runs:/{run.info.run_id}/model", tracking_uri=tracker.uri)
    for (key, a), b in zip(torch_model.state_dict().items(), artifact_model.state_dict().values()):
        assert torch.equal(a, b), key

    # Trained: on the items it learned, the true caption ranks first for most images.
    all_rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    train_rows = [row for row in all_rows if row["split"] == "train"][:32]
    train_images, train_texts = torch_embeddings(torch_model, [manifest.parent / r["image"] for r in train_rows],
                                                 [r["captions"][0] for r in train_rows])
    own_first = np.mean(cosine(train_images, train_texts).argmax(axis=1) == np.arange(len(train_rows)))
    assert own_first > 0.5, f"only {own_first:.0%} of the training images rank their own caption first"


def test_pyfunc_rows_take_one_input_each(trained):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{trained[0]}/mlruns.db")
    try:
        model = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    finally:
        mlflow.set_tracking_uri(None)
    both = pd.DataFrame({"image": [None, b"not an image"], "caption": ["a red circle", None]})
    with pytest.raises(ValueError, match="row 1: 'image' is not a decodable image file"):
        model.predict(both)
    with pytest.raises(ValueError, match="row 0: give exactly one"):
        model.predict(pd.DataFrame({"image": [b"x"], "caption": ["a red circle"]}))
    mixed = model.predict(pd.DataFrame({"caption": ["a red circle", "a big blue square"]}))
    assert mixed.shape == (2, 32) and mixed.dtype == np.float32


def test_register_name_is_checked_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(REPO / "jobs/demo.yaml"), "--register", "a/b"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unitune: error: ") and "tracking.register_as" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "mlruns.db").exists()
