"""The command line: exit codes, one-line errors, help, fast start without heavy imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from unitune import cli
from unitune.cli import Command, main

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "jobs" / "demo.yaml"
JOB_FILES = sorted((REPO / "jobs").glob("*.yaml"))


@pytest.fixture(autouse=True)
def no_cluster_env(monkeypatch):
    for var in ("FLICKR30K_ROOT", "COCO_ROOT", "MSRVTT_ROOT", "RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_validate_shipped_jobs(path, capsys, emoji_job_env):
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert f"job:       {path.stem}" in out and out.rstrip().endswith("OK")
    assert "space:" in out and "params" in out
    if path.stem in ("flickr30k_clip", "coco_clip", "msrvtt_clip4clip"):
        variable = {"flickr30k_clip": "FLICKR30K_ROOT", "coco_clip": "COCO_ROOT",
                    "msrvtt_clip4clip": "MSRVTT_ROOT"}[path.stem]
        assert "unitune: warning:" in err and variable in err
    else:  # nothing but the preflight's progress lines, which a slow machine prints
        assert [line for line in err.splitlines() if not line.startswith("unitune: preflight: ")] == []


def test_validate_with_space_and_overrides_in_any_order(capsys):
    space = REPO / "search_spaces" / "vlc.yaml"
    assert main(["validate", str(DEMO), "loss.margin=0.0", "--space", str(space), "train.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "margin 0," in out and "3 epochs" in out and "vlc.yaml: 2 params" in out


@pytest.mark.parametrize("argv, fragment", [
    (["validate", str(DEMO), "loss.gamma=-1"], f"{DEMO}: loss.gamma: must be > 0 (got -1)"),
    (["validate", str(DEMO), "loss.lossy=1"], f"{DEMO}: loss.lossy: unknown key"),
    (["validate", str(DEMO), "--space", "nowhere.yaml"], "search.space: file not found"),
    (["validate", "nowhere.yaml"], "nowhere.yaml: file not found"),
])
def test_bad_job_exits_2_with_one_line(argv, fragment, capsys):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("unitune: error: ")
    assert fragment in err and "Traceback" not in err


def test_bad_space_exits_2_naming_the_space_file(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("params: {loss.margin: {type: uniform, low: 1, high: 0}}\n")
    assert main(["validate", str(DEMO), "--space", str(space)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"unitune: error: {space}: params.loss.margin.high: empty range")


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["validate", str(DEMO), "--bogus"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert all(command.name in out for command in cli.COMMANDS)


def test_keyboard_interrupt_exits_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "COMMANDS", [Command("boom", "raise", lambda parser: None, interrupted)])
    assert main(["boom"]) == 130


def test_python_m_unitune_help_and_light_imports():
    help_run = subprocess.run([sys.executable, "-m", "unitune", "--help"], capture_output=True, text=True,
                              timeout=60)
    assert help_run.returncode == 0 and "validate" in help_run.stdout
    probe = ("import sys; from unitune.cli import main; code = main(['validate', sys.argv[1]]); "
             "heavy = [m for m in ('torch', 'ray', 'mlflow', 'transformers') if m in sys.modules]; "
             "print('HEAVY', heavy); sys.exit(code)")
    run = subprocess.run([sys.executable, "-c", probe, str(DEMO)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "HEAVY []" in run.stdout
