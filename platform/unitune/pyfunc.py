"""The trained model as an MLflow model: a pyfunc that embeds images and captions.

``unitune train`` logs it on its run as the logged model :data:`NAME` (the run's Models
column; ``runs:/<run_id>/model``) and, with ``tracking.register_as``, registers it
(``models:/<name>/<version>``). It holds the model in ``save_model`` format under its
artifact :data:`ARTIFACT` and applies the model's own preprocessing, so a user sends
encoded image files and raw captions::

    model = mlflow.pyfunc.load_model("models:/NAME/1")
    image_emb = model.predict(pd.DataFrame({"image": [png_bytes, ...]}))   # [N, D] float32
    text_emb = model.predict(pd.DataFrame({"caption": ["a red circle", ...]}))

Input: a DataFrame with an ``image`` column (encoded PNG/JPEG bytes) and/or a ``caption``
column (str); each row holds exactly one of them. Output: one L2-normalised embedding per
row, in input order, so ``image_emb @ text_emb.T`` is the cosine similarity. Images go
through ``image_transform(train=False)`` and ``encode_image``, captions through
``tokenize`` and ``encode_text``. Video clips are embedded with the PyTorch model
(``unitune.models.load_model``, ``encode_video``).

Loading needs unitune installed (``pip_requirements`` name it with torch, transformers,
pillow and pandas). ``unitune.model_source.local_model_dir`` turns a run or model URI, or a
local copy of either, into the ``save_model`` directory that ``unitune.models.load_model`` reads.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from unitune.model_source import ARTIFACT
from unitune.models import load_model

NAME = "model"  # the logged model's name on its run: runs:/RUN_ID/model
ENTRY = Path(__file__).with_name("pyfunc_entry.py")  # MLflow's models-from-code file
BATCH = 64


class RetrievalModel(PythonModel):
    """Embeds the ``image`` or ``caption`` of each row (see the module docstring)."""

    def load_context(self, context) -> None:
        self.model = load_model(context.artifacts[ARTIFACT]).eval()
        self.transform = self.model.image_transform(train=False)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        """``[len(model_input), D]`` float32 embeddings.

        Raises:
            ValueError: a row holds neither or both of ``image`` and ``caption``, or an image
                that PIL cannot decode (the row is named).
        """
        return embed_rows(self.model, self.transform, model_input)


def embed_rows(model, transform, frame: pd.DataFrame) -> np.ndarray:
    """The embedding of each row's image or caption (see :class:`RetrievalModel`)."""
    import torch
    from PIL import Image

    n = len(frame)
    images = frame["image"] if "image" in frame else pd.Series([None] * n, index=frame.index)
    captions = frame["caption"] if "caption" in frame else pd.Series([None] * n, index=frame.index)
    has_image = images.map(_present).to_numpy(dtype=bool)
    has_caption = captions.map(_present).to_numpy(dtype=bool)
    wrong = np.flatnonzero(has_image == has_caption)
    if wrong.size:
        raise ValueError(f"row {int(wrong[0])}: give exactly one of 'image' (encoded bytes) and 'caption' (text)")
    out = np.zeros((n, model.embed_dim), dtype=np.float32)
    rows_i, rows_c = np.flatnonzero(has_image), np.flatnonzero(has_caption)
    with torch.no_grad():
        for start in range(0, rows_i.size, BATCH):
            rows = rows_i[start : start + BATCH]
            pixels = []
            for row in rows:
                try:
                    pixels.append(transform(Image.open(io.BytesIO(images.iloc[row])).convert("RGB")))
                except Exception as exc:  # noqa: BLE001 - PIL raises several types for bad bytes
                    raise ValueError(f"row {int(row)}: 'image' is not a decodable image file ({exc})") from None
            out[rows] = model.encode_image(torch.stack(pixels)).float().numpy()
        for start in range(0, rows_c.size, BATCH):
            rows = rows_c[start : start + BATCH]
            tokens = model.tokenize([str(captions.iloc[row]) for row in rows])
            out[rows] = model.encode_text(tokens["input_ids"], tokens["attention_mask"]).float().numpy()
    return out


def _present(value) -> bool:
    return value is not None and not (pd.api.types.is_scalar(value) and pd.isna(value))  # None, NaN, pd.NA


def signature(embed_dim: int):
    """Input: optional ``image`` (binary) and ``caption`` (string) columns; output: a
    float32 tensor ``[-1, embed_dim]``."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([ColSpec("binary", "image", required=False), ColSpec("string", "caption", required=False)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, embed_dim))]),
    )


def requirements() -> list[str]:
    """What loading the model needs, pinned to this environment's versions."""
    from importlib.metadata import version

    names = ("unitune", "torch", "transformers", "pillow", "pandas")
    return [f"{name}=={version(name).split('+')[0]}" for name in names]  # torch 2.13.0+cpu -> 2.13.0


def log(tracker, run_id: str, model_dir: str | Path, *, step: int, register_as: str | None = None):
    """Log the ``save_model`` directory ``model_dir`` on run ``run_id`` as the pyfunc
    :data:`NAME` (linked to the run's metrics at ``step``), registered as ``register_as``
    when given. Returns ``(model URI, registered version or None)``."""
    import mlflow.pyfunc

    embed_dim = load_model(model_dir).embed_dim
    return tracker.log_model(
        run_id,
        NAME,
        flavor=mlflow.pyfunc,
        step=step,
        register_as=register_as,
        python_model=str(ENTRY),
        artifacts={ARTIFACT: str(model_dir)},
        signature=signature(embed_dim),
        pip_requirements=requirements(),
    )
