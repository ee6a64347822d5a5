"""Model registry, `build_model` from a config spec, and save/load."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from unitune.choices import FREEZE_DEFAULTS, MODEL_DEFAULTS
from unitune.errors import UserError
from unitune.models.base import DualEncoder
from unitune.models.clip import CLIPDualEncoder
from unitune.models.freeze import FREEZE_KEYS
from unitune.models.tiny import TinyCLIP
from unitune.models.two_tower import TwoTowerEncoder

# Stable names: they are MLflow params and Optuna choices.
MODEL_REGISTRY: dict[str, type[DualEncoder]] = {
    "tiny": TinyCLIP,
    "clip": CLIPDualEncoder,
    "two_tower": TwoTowerEncoder,
}

CONFIG_FILE = "model.json"
WEIGHTS_FILE = "model.pt"


def model_config(spec: Mapping[str, Any]) -> dict:
    """The plain, JSON-able model config (``model.json``) from the job's ``model`` section as
    plain values (``job.model.model_dump()``) or a saved ``model.json``.

    Keys: name preset checkpoint image_encoder text_encoder embed_dim video_pooling
    image_size freeze{visual_trainable_layers, text_trainable_layers, projections_only}; other
    keys are ignored, missing ones take ``unitune.choices.MODEL_DEFAULTS`` (the job schema's
    defaults). Raises UserError for an unknown model name.
    """
    config = {key: spec.get(key, default) for key, default in MODEL_DEFAULTS.items()}
    freeze = spec.get("freeze") or {}
    config["freeze"] = {key: freeze.get(key, FREEZE_DEFAULTS[key]) for key in FREEZE_KEYS}
    if config["name"] not in MODEL_REGISTRY:
        raise UserError(f"model.name: unknown model {config['name']!r}; choose from {list(MODEL_REGISTRY)}")
    return config


def build_model(spec: Mapping[str, Any], captions: list[str] | None = None) -> DualEncoder:
    """A DualEncoder from a model config (see `model_config`); `captions` build the tiny
    model's vocabulary. Raises UserError for bad names, paths or freeze settings."""
    config = model_config(spec)
    return MODEL_REGISTRY[config["name"]].from_config(config, captions=captions)


def save_model(model: DualEncoder, directory: str | Path) -> Path:
    """Write `model.json` (config), `model.pt` (state dict) and the tokenizer/architecture
    files into `directory`; -> the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(json.dumps(model.config, indent=2))
    torch.save(model.state_dict(), directory / WEIGHTS_FILE)
    model.save_assets(directory)
    return directory


def load_model(
    source: str | Path, map_location: str | torch.device = "cpu", *, tracking_uri: str | None = None
) -> DualEncoder:
    """Rebuild a model written by `save_model` (weights via torch.load(weights_only=True)),
    needing neither the original checkpoint nor captions.

    `source`: a `save_model` directory (a downloaded `model` artifact); a local MLflow model
    directory (the pyfunc `unitune train` logs); or a run or model URI (`runs:/RUN_ID/model`,
    `models:/NAME/VERSION`) in the store `tracking_uri` (default: MLflow's own setting).
    Only a URI imports MLflow (`unitune.model_source`). Raises UserError when `source` holds
    no saved model or cannot be downloaded."""
    directory = Path(source)
    is_uri = ":/" in str(source) and not directory.exists()
    if is_uri or (directory / "MLmodel").is_file():
        import tempfile

        from unitune.model_source import local_model_dir  # MLflow (heavy) only for a URI

        with tempfile.TemporaryDirectory(prefix="unitune-model-") as tmp:
            return _load_dir(local_model_dir(str(source), tracking_uri, dst=tmp), map_location)
    return _load_dir(directory, map_location)


def _load_dir(directory: Path, map_location: str | torch.device) -> DualEncoder:
    config_path = directory / CONFIG_FILE
    if not config_path.is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise UserError(f"{directory}: no saved model ({CONFIG_FILE} and {WEIGHTS_FILE} expected)")
    config = model_config(json.loads(config_path.read_text()))
    model = MODEL_REGISTRY[config["name"]].from_config(config, assets=directory)
    state = torch.load(directory / WEIGHTS_FILE, map_location=map_location, weights_only=True)
    model.load_state_dict(state)
    return model
