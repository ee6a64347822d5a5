import pathlib
import subprocess
import sys
import sysconfig

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_platform_is_the_standard_library_module():
    # The source root is called platform/; it must never shadow Python's own module.
    assert not (ROOT / "platform" / "__init__.py").exists()
    import platform

    assert callable(platform.system)
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert pathlib.Path(platform.__file__).resolve().parent == stdlib


def test_unitune_imports_from_the_source_root():
    import unitune

    assert pathlib.Path(unitune.__file__).resolve().parent == ROOT / "platform" / "unitune"
    assert unitune.__version__


def test_library_layers_import_no_ray_mlflow_or_cli():
    # docs/internals.md, Layers: the library (losses, eval, data, models) is plain PyTorch.
    code = (
        "import sys, unitune.losses, unitune.eval, unitune.data, unitune.models;"
        "bad = [m for m in ('ray', 'mlflow', 'unitune.cli', 'unitune.tracking') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
