"""Job and search-space specs: shipped files load, bad input names file + key, overrides."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from unitune.config import (
    CONVERGENCE_METRICS, METRICS, JobSpec, SearchSpaceSpec, apply_overrides, load_job, load_space,
    missing_inputs, parse_override, require_inputs,
)
from unitune.errors import UserError

REPO = Path(__file__).resolve().parents[1]
JOB_FILES = sorted((REPO / "jobs").glob("*.yaml"))
SPACE_FILES = sorted((REPO / "search_spaces").glob("*.yaml"))
DEMO = REPO / "jobs" / "demo.yaml"


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def first_line_error(exc_info) -> str:
    return str(exc_info.value).splitlines()[0]


# --- shipped files ---------------------------------------------------------------------------

def test_shipped_files_exist():
    names = {p.name for p in JOB_FILES} | {p.name for p in SPACE_FILES}
    for name in ("demo.yaml", "emoji_two_tower.yaml", "flickr30k_clip.yaml", "coco_clip.yaml",
                 "msrvtt_clip4clip.yaml", "unified.yaml", "triplet_hn.yaml", "vlc.yaml",
                 "unified_pareto.yaml"):
        assert name in names


@pytest.mark.parametrize("path", JOB_FILES + SPACE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_file_opens_with_its_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# unitune ")
    assert f"{path.parent.name}/{path.name}" in first


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_shipped_job_loads_with_its_space(path, monkeypatch, emoji_job_env):
    for var in ("FLICKR30K_ROOT", "COCO_ROOT", "MSRVTT_ROOT", "RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    job = load_job(path)
    assert job.name == path.stem
    assert job.source == path
    assert job.search.space is not None and job.search.space.is_file()
    space = load_space(job.search.space, job)
    assert space.asha.max_epochs <= job.train.epochs
    # A job dumped for a Ray worker validates back to the same job.
    again = JobSpec.model_validate(json.loads(json.dumps(job.model_dump(mode="json"))))
    assert again.model_dump() == job.model_dump()


@pytest.mark.parametrize("path", SPACE_FILES, ids=lambda p: p.name)
def test_shipped_space_loads_against_every_job(path, monkeypatch, emoji_job_env):
    for var in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    for job_path in JOB_FILES:
        space = load_space(path, load_job(job_path))
        assert space.metric in METRICS and space.mode in ("min", "max")
        assert space.target is not None


def test_gpu_jobs_name_the_missing_variable(monkeypatch):
    monkeypatch.delenv("FLICKR30K_ROOT", raising=False)
    job = load_job(REPO / "jobs" / "flickr30k_clip.yaml")
    problems = missing_inputs(job)
    assert problems and all("FLICKR30K_ROOT" in p for p in problems)
    with pytest.raises(UserError, match="FLICKR30K_ROOT"):
        require_inputs(job)


def test_pareto_space_has_two_objectives():
    space = load_space(REPO / "search_spaces" / "unified_pareto.yaml", load_job(DEMO))
    assert space.objective_names() == (["rsum", "epochs_to_target"], ["max", "min"])


# --- defaults and semantics ------------------------------------------------------------------

def test_minimal_job_is_the_cpu_demo(tmp_path):
    job = load_job(write(tmp_path, "name: mini\n"))
    assert (job.data.format, job.model.name, job.resources.num_workers) == ("synthetic", "tiny", 1)
    assert job.resources.use_gpu is False and job.ray.address is None
    assert job.tracking.uri.startswith("sqlite:") and job.experiment == "mini"
    assert job.search.space is None and missing_inputs(job) == []


def test_metric_modes_follow_their_meaning():
    for name, mode in METRICS.items():
        expected = "max" if re.fullmatch(r"r\d+_(i2t|t2i)|rsum", name) else "min"
        assert mode == expected, name
    assert CONVERGENCE_METRICS["epochs_to_target"] == "min"


def test_topk_may_be_set_when_mining_is_not_topk(tmp_path):
    job = load_job(write(tmp_path, "name: a\nloss: {mining: all, topk: 4}\n"))
    assert job.loss.topk == 4


def test_search_space_path_is_relative_to_the_job_file(tmp_path):
    write(tmp_path, "metric: rsum\n", "spaces/s.yaml")
    job = load_job(write(tmp_path, "name: a\nsearch: {space: ../spaces/s.yaml}\n", "jobs/j.yaml"))
    assert job.search.space == (tmp_path / "spaces" / "s.yaml").resolve()


def test_env_vars_expand_with_defaults(tmp_path, monkeypatch):
    (tmp_path / "ann.json").write_text("{}")
    monkeypatch.setenv("UNITUNE_TEST_ROOT", str(tmp_path))
    monkeypatch.delenv("UNITUNE_TEST_UNSET", raising=False)
    job = load_job(write(tmp_path, "name: a\ndata: {format: karpathy, annotations: '${UNITUNE_TEST_ROOT}/ann.json'}\n"
                                   "tracking: {uri: '${UNITUNE_TEST_UNSET:-http://127.0.0.1:5000}'}\n"))
    assert job.data.annotations == tmp_path / "ann.json"
    assert job.tracking.uri == "http://127.0.0.1:5000"
    assert missing_inputs(job) == []


def test_unset_variable_loads_but_is_reported(tmp_path, monkeypatch):
    monkeypatch.delenv("UNITUNE_TEST_UNSET", raising=False)
    job = load_job(write(tmp_path, "name: a\ndata: {format: karpathy, annotations: '${UNITUNE_TEST_UNSET}/a.json'}\n"))
    [problem] = missing_inputs(job)
    assert "UNITUNE_TEST_UNSET" in problem and "data.annotations" in problem


def test_missing_data_root_is_reported_not_refused(tmp_path):
    write(tmp_path, "{}", "a.json")
    job = load_job(write(tmp_path, "name: a\ndata: {format: karpathy, annotations: a.json, root: nowhere}\n"))
    [problem] = missing_inputs(job)
    assert problem.startswith("data.root: not found") and str(tmp_path / "nowhere") in problem


def test_space_conditions_order_and_activity():
    space = SearchSpaceSpec(params={
        "loss.topk": {"type": "int", "low": 2, "high": 8, "when": {"loss.mining": "topk"}},
        "loss.mining": {"type": "choice", "values": ["all", "hardest", "topk"]},
        "loss.warmup_epochs": {"type": "int", "low": 0, "high": 2, "when": {"loss.mining": ["hardest"]}},
    })
    order = [k for k, _ in space.ordered_params()]
    assert order.index("loss.mining") < order.index("loss.topk")
    topk = space.params["loss.topk"]
    assert topk.is_active({"loss.mining": "topk"})
    assert not topk.is_active({"loss.mining": "all"}) and not topk.is_active({})


def test_job_overrides_the_space_budget():
    job = apply_overrides(load_job(DEMO), {"search.num_trials": 3, "search.target": 99.5})
    space = load_space(job.search.space, job)
    assert (space.num_trials, space.target) == (3, 99.5)


# --- overrides -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("loss.margin=0.3", ("loss.margin", 0.3)),
    ("optim.lr=1.0e-4", ("optim.lr", 1.0e-4)),
    ("loss.mining=topk", ("loss.mining", "topk")),
    ("train.grad_checkpointing=true", ("train.grad_checkpointing", True)),
    ("ray.address=", ("ray.address", None)),
    ("tracking.uri=http://h:5000", ("tracking.uri", "http://h:5000")),
])
def test_parse_override(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["loss.margin", "=3", "loss..margin=1", "1loss=2"])
def test_parse_override_refuses_malformed(text):
    with pytest.raises(UserError, match="key.path=value"):
        parse_override(text)


def test_load_job_with_overrides():
    job = load_job(DEMO, ["loss.margin=0.35", "train.epochs=2", "loss.mining=topk", "loss.topk=4"])
    assert (job.loss.margin, job.train.epochs, job.loss.mining, job.loss.topk) == (0.35, 2, "topk", 4)


def test_apply_overrides_returns_a_new_validated_job():
    job = load_job(DEMO)
    new = apply_overrides(job, {"loss.gamma": 50, "optim.lr": "1e-4"})
    assert (new.loss.gamma, new.optim.lr) == (50.0, 1e-4)
    assert job.loss.gamma == 20.0 and new.source == job.source
    with pytest.raises(UserError) as info:
        apply_overrides(job, {"loss.gamma": -1})
    assert first_line_error(info) == f"{DEMO}: loss.gamma: must be > 0 (got -1)"


@pytest.mark.parametrize("override, key", [
    ("loss.margn=0.1", "loss.margn"),
    ("loss.margin=abc", "loss.margin"),
    ("loss.margin.x=1", "loss.margin"),
])
def test_bad_override_names_the_key(override, key):
    with pytest.raises(UserError) as info:
        load_job(DEMO, [override])
    assert first_line_error(info).startswith(f"{DEMO}: {key}: ")


# --- bad job files ---------------------------------------------------------------------------

BAD_JOBS = [
    ("name: a\nloss: {margn: 0.2}\n", "loss.margn", 'unknown key (did you mean "margin"?)'),
    ("name: a\nlosses: {}\n", "losses", "unknown key"),
    ("name: a\ntrain: {epochs: many}\n", "train.epochs", "must be an integer (got 'many')"),
    ("name: a\nloss: {margin: -0.1}\n", "loss.margin", "must be >= 0 (got -0.1)"),
    ("name: a\ntrain: {epochs: -2}\n", "train.epochs", "must be > 0 (got -2)"),
    ("name: a\nloss: {gamma: 0}\n", "loss.gamma", "must be > 0 (got 0)"),
    ("name: a\nloss: {gamma: -1}\n", "loss.gamma", "must be > 0 (got -1)"),
    ("name: a\ntrain: {batch_size: 0}\n", "train.batch_size", "must be >= 2 (got 0)"),
    ("name: a\nloss: {mining: topk, topk: 0}\n", "loss.topk", "must be > 0 (got 0)"),
    ("name: a\nloss: {mining: topk}\n", "loss.topk", "required when mining is topk"),
    ("name: a\nloss: {mining: semi}\n", "loss.mining", "must be one of"),
    ("name: a\nmodel: {name: resnet}\n", "model.name", "must be one of"),
    ("name: a\nmodel: {name: two_tower}\n", "model.image_encoder", "required for model two_tower"),
    ("name: a\nmodel: {name: tiny, image_size: 96}\n", "model.image_size", "only the two_tower model"),
    ("name: a\ndata: {format: karpathy}\n", "data.annotations", "required for format karpathy"),
    ("name: a\ndata: {format: msrvtt, modality: image, annotations: x}\n", "data.modality", "holds videos"),
    ("name: a\ndata: {synthetic: {num_train: 32}}\n", "train.batch_size", "larger than the train split"),
    ("name: a\nresources: {num_workers: 3}\n", "train.batch_size", "divisible by resources.num_workers 3"),
    ("name: a\nray: {address: 'ray://10.0.0.5:10001'}\n", "tracking.uri", "cannot reach"),
    ("name: a\nloss: 3\n", "loss", "must be a mapping of keys (got 3)"),
    ("seed: 1\n", "name", "required"),
    ("name: ''\n", "name", "must not be empty"),
    ("name: a\ndata: {format: manifest, annotations: nowhere.jsonl}\n", "data.annotations", "file not found"),
]


@pytest.mark.parametrize("text, key, reason", BAD_JOBS, ids=[b[1] + ":" + b[2][:20] for b in BAD_JOBS])
def test_bad_job_names_file_key_and_reason(tmp_path, text, key, reason):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as info:
        load_job(path)
    line = first_line_error(info)
    assert line.startswith(f"{path}: {key}: "), line
    assert reason in line
    assert "Traceback" not in str(info.value)


def test_a_missing_space_file_is_refused_where_a_space_is_read(tmp_path, monkeypatch, capsys):
    # A user copying one job file elsewhere can still train it: training reads no space file.
    from unitune.cli import main
    from unitune.train import run as train_run

    path = write(tmp_path, "name: a\nsearch: {space: nowhere.yaml}\n")
    assert load_job(path).search.space == tmp_path / "nowhere.yaml"
    trained = []
    monkeypatch.setattr(train_run, "train", lambda job: trained.append(job))
    assert main(["train", str(path)]) == 0 and len(trained) == 1
    for command in (["validate", str(path)], ["search", str(path)], ["submit", str(path), "--address", "http://127.0.0.1:1"]):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert f"{path}: search.space: file not found: {tmp_path / 'nowhere.yaml'}" in err, command


def test_every_error_is_reported_one_line_each(tmp_path):
    path = write(tmp_path, "name: a\nloss: {gamma: -1, margin: -1}\ntrain: {epochs: 0}\n")
    with pytest.raises(UserError) as info:
        load_job(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 3 and all(line.startswith(f"{path}: ") for line in lines)


@pytest.mark.parametrize("text, where, reason", [
    ("name: a\nloss: {margin: 0.2\n", ":3:1", "invalid YAML"),
    ("name: a\nloss:\n  margin: 0.1\n  margin: 0.2\n", ":4:3", "duplicate key 'margin'"),
    ("- name: a\n", "", "must be a mapping"),
])
def test_bad_yaml_names_file_and_line(tmp_path, text, where, reason):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as info:
        load_job(path)
    assert str(info.value).startswith(f"{path}{where}: ") and reason in str(info.value)


def test_missing_job_file(tmp_path):
    with pytest.raises(UserError, match="nope.yaml: file not found"):
        load_job(tmp_path / "nope.yaml")


# --- bad search spaces -----------------------------------------------------------------------

BAD_SPACES = [
    ("params: {loss.margin: {type: uniform, low: 0.4, high: 0.4}}", "params.loss.margin.high", "empty range"),
    ("params: {loss.gamma: {type: loguniform, low: 0, high: 10}}", "params.loss.gamma.low", "must be > 0"),
    ("params: {loss.topk: {type: int, low: 1.5, high: 8}}", "params.loss.topk.low", "must be an integer"),
    ("params: {loss.topk: {type: int, low: 2}}", "params.loss.topk.high", "required for type int"),
    ("params: {loss.mining: {type: choice, values: []}}", "params.loss.mining.values", "non-empty"),
    ("params: {loss.topk: {type: int, low: 0, high: 8, log: true}}", "params.loss.topk.low", "on a log scale"),
    ("params: {loss.margin: {type: uniform, low: 0.1, high: 0.5, log: true}}", "params.loss.margin.log",
     "only for type int"),
    ("params: {loss.mining: {type: choice, values: [all, semi]}}", "params.loss.mining",
     "value 'semi' is not valid for job key loss.mining"),
    ("params: {train.epochs: {type: uniform, low: 1, high: 4}}", "params.train.epochs", "must be an integer"),
    ("params: {loss.margin: {type: normal, low: 0, high: 1}}", "params.loss.margin.type", "must be one of"),
    ("params: {loss.temperature: {type: uniform, low: 0.01, high: 0.1}}", "params.loss.temperature",
     "not a job key"),
    ("params: {loss: {type: choice, values: [1]}}", "params.loss", "is a section"),
    ("params: {loss.mining: {type: choice, values: [all, topk]},\n"
     "         loss.topk: {type: int, low: 2, high: 8, when: {loss.minig: topk}}}",
     "params.loss.topk.when.loss.minig", "unknown parameter 'loss.minig'"),
    ("params: {loss.mining: {type: choice, values: [all, hardest]},\n"
     "         loss.topk: {type: int, low: 2, high: 8, when: {loss.mining: topk}}}",
     "params.loss.topk.when.loss.mining", "never takes 'topk'"),
    ("params: {loss.margin: {type: uniform, low: 0, high: 1, when: {loss.gamma: 2}},\n"
     "         loss.gamma: {type: uniform, low: 1, high: 9, when: {loss.margin: 0.5}}}",
     "params.loss.margin.when.loss.gamma", "continuous"),
    ("params: {loss.warmup_epochs: {type: int, low: 0, high: 2, when: {loss.topk: 3}},\n"
     "         loss.topk: {type: int, low: 2, high: 8, when: {loss.warmup_epochs: 1}}}",
     "params.loss.warmup_epochs.when", "cycle"),
    ("params: {loss.margin: {type: uniform, low: 0, high: 1}}\nfixed: {loss.margin: 0.2}",
     "fixed.loss.margin", "also a searched parameter"),
    ("fixed: {loss.gamma: -5}", "fixed.loss.gamma", "must be > 0"),
    ("metric: accuracy", "metric", "unknown metric 'accuracy'"),
    ("mode: maximize", "mode", "must be one of"),
    ("metric: rsum\nmode: min", "mode", "rsum is better when maximised"),
    ("asha: {max_epochs: 2, grace_period: 3}", "asha.grace_period", "must be <= max_epochs 2"),
    ("asha: {reduction_factor: 1}", "asha.reduction_factor", "must be > 1"),
    ("num_trials: 0", "num_trials", "must be > 0"),
    ("objectives: [{metric: rsum}]", "objectives", "at least 2"),
    ("objectives: [{metric: rsum}, {metric: epochs_to_target}]", "target", "required by objective"),
    ("target: 100\nobjectives: [{metric: epochs_to_target}, {metric: rsum}]", "objectives.0",
     "must be the study metric"),
    ("objectives: [{metric: rsum}, {metric: speed}]", "objectives.1.metric", "unknown metric"),
]


@pytest.mark.parametrize("text, key, reason", BAD_SPACES, ids=[b[1] + ":" + b[2][:20] for b in BAD_SPACES])
def test_bad_space_names_file_key_and_reason(tmp_path, text, key, reason):
    path = write(tmp_path, text + "\n", "space.yaml")
    with pytest.raises(UserError) as info:
        load_space(path)
    line = first_line_error(info)
    assert line.startswith(f"{path}: {key}: "), line
    assert reason in line


@pytest.mark.parametrize("text, key, reason", [
    ("asha: {max_epochs: 9}", "asha.max_epochs", "must be <= train.epochs 6"),
    ("asha: {grace_period: 7}", "asha.grace_period", "must be <= max_epochs 6"),
    ("params: {loss.mining: {type: choice, values: [all, topk]}}", "params",
     "{'loss.mining': 'topk'} gives an invalid job"),
    ("params: {loss.gamma: {type: loguniform, low: 5, high: 500}}\nfixed: {loss.learnable_gamma: true}",
     "params", "loss.gamma: must be <= max_gamma"),
])
def test_space_checked_against_the_job(tmp_path, text, key, reason):
    path = write(tmp_path, text + "\n", "space.yaml")
    load_space(path)  # fine on its own
    with pytest.raises(UserError) as info:
        load_space(path, load_job(DEMO))
    line = first_line_error(info)
    assert line.startswith(f"{path}: {key}: "), line
    assert reason in line


def test_space_mode_defaults_to_the_metric_direction(tmp_path):
    space = load_space(write(tmp_path, "metric: medr_t2i\n", "s.yaml"))
    assert space.mode == "min" and space.asha.max_epochs is None
    space = load_space(write(tmp_path, "metric: rsum\n", "s.yaml"), load_job(DEMO))
    assert space.mode == "max" and space.asha.max_epochs == 6


# --- issue 10: finite values, bounds, a bounded loader, masked credentials -------------------

@pytest.mark.parametrize("text, key, reason", [
    ("name: a\nloss: {gamma: .inf}\n", "loss.gamma", "must be a finite number"),
    ("name: a\nloss: {max_gamma: .nan}\n", "loss.max_gamma", "must be a finite number"),
    ("name: a\noptim: {grad_clip: .inf}\n", "optim.grad_clip", "must be a finite number"),
    ("name: a\nresources: {cpu_per_worker: .inf}\n", "resources.cpu_per_worker", "must be a finite number"),
    ("name: a\nmodel: {name: two_tower, image_encoder: x, text_encoder: y, image_size: 8}\n", "model.image_size", "must be >= 16"),
    ("name: a\nmodel: {name: clip, checkpoint: c, preset: whatever}\n", None, None),  # presets are tiny's only
    ("name: a\nresources: {num_workers: 100000}\n", "resources.num_workers", "must be <= 4096"),
    ("name: a\ntrain: {epochs: 10000000}\n", "train.epochs", "must be <= 100000"),
    ("name: a\ndata: {synthetic: {captions_per_item: 1000}}\n", "data.synthetic.captions_per_item", "must be <= 100"),
    (f"name: {'n' * 200}\n", "name", "must be at most 128 characters"),
])
def test_finite_and_bounded_values(tmp_path, text, key, reason):
    path = write(tmp_path, text)
    if key is None:
        load_job(path)
        return
    with pytest.raises(UserError) as info:
        load_job(path)
    line = first_line_error(info)
    assert line.startswith(f"{path}: {key}: ") and reason in line, line
    assert len(line) < 300


def test_space_target_and_reduction_factor_must_be_finite(tmp_path):
    for text, key in [("target: .nan\n", "target"), ("asha: {reduction_factor: .inf}\n", "asha.reduction_factor")]:
        path = write(tmp_path, text, "space.yaml")
        with pytest.raises(UserError, match=rf"space\.yaml: {re.escape(key)}: must be a finite number"):
            load_space(path)


def test_cache_dir_that_is_a_file(tmp_path):
    (tmp_path / "cache").write_text("x")
    path = write(tmp_path, f"name: a\ndata: {{synthetic: {{cache_dir: {tmp_path}/cache}}}}\n")
    with pytest.raises(UserError, match=r"data\.synthetic\.cache_dir: .*/cache is a file, not a folder"):
        load_job(path)


def test_preflight_modes_from_yaml(tmp_path):
    for given, mode in [("off", "off"), ("false", "off"), ("sample", "sample"), ("full", "full")]:
        assert load_job(write(tmp_path, f"name: a\ndata: {{preflight: {given}}}\n")).data.preflight == mode
    assert load_job(write(tmp_path, "name: a\n")).data.preflight == "full"


def test_env_expansion_is_one_level(tmp_path, monkeypatch):
    monkeypatch.setenv("UNITUNE_OUTER", "${UNITUNE_INNER}/x")
    monkeypatch.setenv("UNITUNE_INNER", "expanded")
    job = load_job(write(tmp_path, "name: a\nmodel: {name: clip, checkpoint: '${UNITUNE_OUTER}'}\n"))
    assert job.model.checkpoint == "${UNITUNE_INNER}/x"  # a value is inserted as is


def test_yaml_aliases_within_the_bound_load(tmp_path):
    text = "name: a\nx-defaults: &d {margin: 0.3, gamma: 10.0}\n"
    with pytest.raises(UserError, match="x-defaults: unknown key"):  # the anchor holder is not a key
        load_job(write(tmp_path, text))
    job = load_job(write(tmp_path, "name: a\nloss: &d {margin: 0.3, gamma: 10.0}\n"))
    assert job.loss.margin == 0.3


def test_bounds_of_the_loader_are_documented():
    from unitune.config import loading

    doc = loading.__doc__
    assert "1 MiB" in doc and loading.MAX_FILE_BYTES == 2**20
    assert "MAX_VALUES" in doc and "MAX_STRING_CHARS" in doc


def test_long_value_is_not_echoed(tmp_path, capsys):
    from unitune.cli import main

    path = write(tmp_path, f"name: a\nmodel: {{preset: {'p' * 3000}}}\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and len(err) < 300 and "(3002 characters)" in err  # the repr, quotes included


@pytest.mark.parametrize("text, shown", [
    ("http://alice:s3cr3t@127.0.0.1:9", "http://alice:***@127.0.0.1:9"),
    ("https://tok3n@mlflow.example.com/x", "https://***@mlflow.example.com/x"),
    ("postgresql://u:p4ss@db:5432/mlflow", "postgresql://u:***@db:5432/mlflow"),
    ("https://h/x?token=abc&run=1", "https://h/x?token=***&run=1"),
    ("sqlite:////tmp/mlruns.db", "sqlite:////tmp/mlruns.db"),
    ("file:///tmp/a@b/c", "file:///tmp/a@b/c"),
    ("two: http://a:b@h and s3://k:s@bucket/p", "two: http://a:***@h and s3://k:***@bucket/p"),
])
def test_redact_masks_credentials(text, shown):
    from unitune.errors import UserError as Error, mask_uri, redact

    assert redact(text) == shown and redact(shown) == shown and mask_uri(text) == shown
    assert str(Error(f"cannot open {text}")) == f"cannot open {shown}"


def test_validate_prints_the_store_masked(tmp_path, capsys):
    from unitune.cli import main

    path = write(tmp_path, "name: a\ntracking: {uri: 'http://alice:s3cr3t@127.0.0.1:9'}\n")
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "tracking:  http://alice:***@127.0.0.1:9" in out and "s3cr3t" not in out + err


def test_space_warnings_empty_space_and_absurd_trials(tmp_path, capsys):
    from unitune.cli import main
    from unitune.config import space_warnings

    space = write(tmp_path, "metric: rsum\nnum_trials: 1000000000\nparams: {}\n", "space.yaml")
    job = write(tmp_path, f"name: a\nsearch: {{space: {space}}}\n")
    warnings = space_warnings(load_space(space))
    assert len(warnings) == 2
    assert warnings[0].startswith(f"{space}: params: empty; all 1000000000 trials would train the same")
    assert warnings[1].startswith(f"{space}: num_trials: 1000000000 trials is more than 10000")
    assert space_warnings(load_space(write(tmp_path, "params: {}\nnum_trials: 1\n", "one.yaml"))) == []
    assert main(["validate", str(job)]) == 0
    err = capsys.readouterr().err
    assert err.count("unitune: warning: ") == 2 and "params: empty" in err
