"""The command line has no import cycles: each command module imports alone, without the
CLI, and building the parser (``unitune --help``) imports no torch, Ray, Optuna or MLflow."""

from __future__ import annotations

import subprocess
import sys

import pytest

from unitune import cli

HEAVY = ("torch", "ray", "mlflow", "optuna", "transformers")
COMMAND_MODULES = sorted({command.run.__module__ for command in cli.COMMANDS})


def _fresh_python(code: str) -> str:
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_every_command_has_the_same_shape():
    names = [command.name for command in cli.COMMANDS]
    assert len(names) == len(set(names))
    for command in cli.COMMANDS:
        module = sys.modules[command.run.__module__]
        assert (command.add_arguments, command.run) == (module.add_arguments, module.run), command.name


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_command_module_imports_alone_without_the_cli(module):
    code = (f"import sys, importlib; importlib.import_module({module!r}); "
            f"print(sorted(m for m in ('unitune.cli', *{HEAVY!r}) if m in sys.modules))")
    assert _fresh_python(code) == "[]"


def test_help_imports_no_heavy_library():
    code = ("import sys\nfrom unitune.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as exc:\n    assert exc.code == 0\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    assert _fresh_python(code).splitlines()[-1] == "[]"
