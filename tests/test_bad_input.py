"""The bad-input table: each user mistake ends `unitune train|search` in-process with exit 2 and
one line naming the file, key or path, no traceback, in seconds, before Ray or MLflow start,
and a store holding earlier runs is left byte for byte as it was.

Each case builds its inputs in ``tmp_path`` (tiny generated images, a manifest, a job file)
and runs ``unitune.cli.main``. ``BAD_INPUT_TABLE`` at the end of the session prints
case -> result -> seconds (``pytest -s tests/test_bad_input.py``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import struct
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unitune.cli import main

LIMIT_S = 15.0
RESULTS: list[tuple[str, str, float]] = []


# --- inputs --------------------------------------------------------------------------------

def png(path: Path, value: int = 90) -> str:
    Image.fromarray(np.full((12, 12, 3), value, np.uint8)).save(path)
    return path.name


def png_header_only(path: Path, width: int, height: int) -> str:
    """A valid PNG signature and IHDR claiming ``width x height`` pixels, a tiny IDAT: what a
    decompression bomb looks like before it is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path.name


def rows(tmp: Path, n_train: int = 4) -> list[dict]:
    """Good manifest rows: ``n_train`` train items, one val and one test item."""
    splits = ["train"] * n_train + ["val", "test"]
    return [{"image": png(tmp / f"ok{k}.png", 20 * k), "caption": f"a picture number {k}", "id": k, "split": s}
            for k, s in enumerate(splits)]


def write_manifest(tmp: Path, items: list[dict], name: str = "m.jsonl") -> Path:
    path = tmp / name
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return path


def with_bad_row(tmp: Path, **row) -> Path:
    """The good rows and one more train row (line 7 of the manifest)."""
    return write_manifest(tmp, rows(tmp) + [{"caption": "the bad one", "id": 99, "split": "train", **row}])


def write_job(tmp: Path, body: str = "", store: Path | None = None) -> Path:
    store = store or tmp / "store"
    path = tmp / "job.yaml"
    path.write_text(f"name: bad\ntrain: {{batch_size: 2, epochs: 1}}\n"
                    f"tracking: {{uri: 'sqlite:///{store}/mlruns.db', artifact_location: '{store}/art'}}\n{body}")
    return path


def manifest_job(tmp: Path, manifest: Path, extra: str = "", modality: str = "image") -> Path:
    return write_job(tmp, f"data: {{format: manifest, modality: {modality}, annotations: {manifest.name}{extra}}}\n")


def karpathy_job(tmp: Path, images: list[dict]) -> Path:
    (tmp / "k.json").write_text(json.dumps({"images": images}))
    return write_job(tmp, "data: {format: karpathy, annotations: k.json}\n")


def karpathy_images(tmp: Path) -> list[dict]:
    return [{"filename": png(tmp / f"k{i}.png", 30 * i), "imgid": i, "split": s,
             "sentences": [{"raw": f"caption {i}"}]} for i, s in enumerate(["train", "train", "val", "test"])]


def mp4(tmp: Path, name: str, frames: int = 4) -> str:
    from unitune.data.synthetic import write_mp4

    write_mp4(str(tmp / name), [np.full((32, 32, 3), 20 * k, np.uint8) for k in range(frames)])
    return name


def video_job(tmp: Path, bad: str) -> Path:
    good = [{"video": mp4(tmp, f"v{k}.mp4"), "caption": f"clip {k}", "id": k, "split": s}
            for k, s in enumerate(["train", "train", "val", "test"])]
    manifest = write_manifest(tmp, good + [{"video": bad, "caption": "bad clip", "id": 9, "split": "train"}])
    return manifest_job(tmp, manifest, ", num_frames: 2", modality="video")


def space_file(tmp: Path) -> Path:
    path = tmp / "space.yaml"
    path.write_text("metric: rsum\nnum_trials: 2\nmax_concurrent: 1\ntarget: 100\nasha: null\n"
                    "params:\n  loss.margin: {type: uniform, low: 0.1, high: 0.3}\n")
    return path


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_only(path: Path) -> Path:
    """Make ``path`` unwritable, also for root (chmod, and chattr +i where root ignores modes)."""
    path.chmod(0o555 if path.is_dir() else 0o444)
    if hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() == 0:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
        if done.returncode != 0:
            pytest.fail(f"cannot make {path} read-only as root: {done.stderr.decode().strip()}")
        READ_ONLY.append(path)
    return path


READ_ONLY: list[Path] = []


@pytest.fixture(autouse=True)
def _writable_again():
    yield
    while READ_ONLY:
        subprocess.run(["chattr", "-i", str(READ_ONLY.pop())], capture_output=True)


# --- cases: (setup(tmp) -> argv, fragments the one line must hold) ---------------------------

def c_broken_jsonl(t):
    m = write_manifest(t, rows(t))
    m.write_text(m.read_text().replace('"id": 1,', '"id": 1', 1))
    return ["train", manifest_job(t, m)], ["m.jsonl: line 2: invalid JSON"]


def c_missing_image(t):
    return ["train", manifest_job(t, with_bad_row(t, image="nowhere.png"))], ["nowhere.png: image file not found", "m.jsonl: line 7"]


def c_corrupt_image(t):
    (t / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 20)
    return ["train", manifest_job(t, with_bad_row(t, image="junk.png"))], ["junk.png: cannot decode image", "line 7"]


def c_garbage_image(t):
    (t / "noise.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    return ["train", manifest_job(t, with_bad_row(t, image="noise.jpg"))], ["noise.jpg: cannot decode image", "line 7"]


def c_truncated_image(t):
    png(t / "full.png")
    data = (t / "full.png").read_bytes()
    (t / "cut.png").write_bytes(data[: len(data) - 30])
    return ["train", manifest_job(t, with_bad_row(t, image="cut.png"))], ["cut.png: cannot decode image", "line 7"]


def c_empty_image(t):
    (t / "zero.png").write_bytes(b"")
    return ["train", manifest_job(t, with_bad_row(t, image="zero.png"))], ["zero.png: image file is empty", "line 7"]


def c_folder_as_image(t):
    (t / "folder.png").mkdir()
    return ["train", manifest_job(t, with_bad_row(t, image="folder.png"))], ["folder.png: image is a folder", "line 7"]


def c_decompression_bomb(t):
    png_header_only(t / "bomb.png", 30000, 30000)
    return ["train", manifest_job(t, with_bad_row(t, image="bomb.png"))], ["bomb.png", "decompression bomb", "line 7"]


def c_bomb_below_pil_error(t):  # 1x..2x PIL's bound: PIL only warns, preflight refuses
    png_header_only(t / "big.png", 10000, 10000)
    return ["train", manifest_job(t, with_bad_row(t, image="big.png"))], ["big.png", "10000x10000", "decompression-bomb bound"]


def c_missing_split(t):
    m = write_manifest(t, [r for r in rows(t) if r["split"] != "val"])
    return ["train", manifest_job(t, m)], ["m.jsonl: split 'val' (data.splits.val) not found; available: test, train"]


def c_empty_caption(t):
    return ["train", manifest_job(t, with_bad_row(t, image="ok0.png", id=0, caption="   "))], ["m.jsonl: line 7: caption 0 is empty"]


def c_caption_not_text(t):
    return ["train", manifest_job(t, with_bad_row(t, image="ok1.png", id=1, caption=42))], ["m.jsonl: line 7: caption 0 is not text"]


def c_not_utf8(t):
    m = write_manifest(t, rows(t))
    lines = m.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"picture", b"pic\xfft\xfere")
    m.write_bytes(b"\n".join(lines))
    return ["train", manifest_job(t, m)], ["m.jsonl: line 3: not UTF-8 text"]


def c_empty_manifest(t):
    (t / "m.jsonl").write_text("\n")
    return ["train", manifest_job(t, t / "m.jsonl")], ["m.jsonl: the manifest has no rows"]


def c_row_without_split(t):
    r = rows(t)
    del r[2]["split"]
    return ["train", manifest_job(t, write_manifest(t, r))], ["m.jsonl: line 3: 'split' is missing"]


def c_csv_bad_captions(t):
    (t / "m.csv").write_text(f"image,captions,split\n{png(t / 'a.png')},not a list,train\n")
    return ["train", manifest_job(t, t / "m.csv")], ["m.csv: line 2: 'captions' must be a JSON list"]


def c_karpathy_invalid_json(t):
    (t / "k.json").write_text('{"images": [\n{"filename": "a.png",\n')
    return ["train", write_job(t, "data: {format: karpathy, annotations: k.json}\n")], ["k.json: line 3: invalid JSON"]


def c_karpathy_missing_image(t):
    images = karpathy_images(t)
    images[1]["filename"] = "gone.png"
    return ["train", karpathy_job(t, images)], ["gone.png: image file not found", "k.json: images[1]"]


def c_karpathy_empty_sentence(t):
    images = karpathy_images(t)
    images[0]["sentences"] = [{"raw": ""}]
    return ["train", karpathy_job(t, images)], ["k.json: images[0].sentences[0].raw is empty"]


def c_karpathy_test_folds(t):  # karpathy_images has 1 test image: 2 folds cannot split it
    return ["train", karpathy_job(t, karpathy_images(t)), "data.test_folds=2"], \
        ["data.test_folds: 2 does not divide the test split", "k.json: split 'test' holds 1 item"]


def c_corrupt_video(t):
    (t / "junk.mp4").write_bytes(b"junk" * 200)
    return ["train", video_job(t, "junk.mp4")], ["junk.mp4: cannot open video", "line 5"]


def c_truncated_video(t):
    data = (t / mp4(t, "whole.mp4", 8)).read_bytes()
    (t / "half.mp4").write_bytes(data[: len(data) // 3])
    return ["train", video_job(t, "half.mp4")], ["half.mp4", "line 5"]


def c_batch_larger_than_split(t):
    return ["train", manifest_job(t, write_manifest(t, rows(t))), "train.batch_size=8"], \
        ["train.batch_size: 8 is larger than the train split", "4 captions"]


def c_all_skipped(t):
    m = write_manifest(t, rows(t) + [{"image": "gone.png", "caption": "x", "id": 7, "split": "val"}])
    (t / "ok4.png").unlink()  # the one good val image
    return ["train", manifest_job(t, m, ", on_bad_sample: skip")], ["split 'val' (data.splits.val) is empty after skipping 2"]


def c_search_bad_data(t):  # the search command runs the same preflight
    return ["search", manifest_job(t, with_bad_row(t, image="nowhere.png")), "--space", space_file(t)], \
        ["nowhere.png: image file not found"]


def override(text: str, *fragments: str):
    def case(t):
        return ["train", write_job(t), text], list(fragments)
    case.__name__ = "c_" + text
    return case


def c_cache_dir_under_file(t):
    (t / "plain.txt").write_text("x")
    return ["train", write_job(t), f"data.synthetic.cache_dir={t}/plain.txt/cache"], \
        ["data.synthetic.cache_dir", "plain.txt, which is a file"]


def c_billion_laughs(t):
    lines = ["name: bad", 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    (t / "job.yaml").write_text("\n".join(lines) + "\n")
    return ["train", t / "job.yaml"], ["job.yaml: more than 20000 values"]


def c_huge_job_file(t):
    path = write_job(t)
    with path.open("a") as handle:
        handle.write("#" + "x" * (2 * 1024 * 1024) + "\n")
    return ["train", path], ["job.yaml: 2.0 MiB; a config file may hold at most 1 MiB"]


def c_long_value(t):
    return ["train", write_job(t, f"model: {{checkpoint: {'c' * 5000}}}\n")], ["job.yaml: model.checkpoint: 5000 characters"]


def c_env_value_too_long(t, monkeypatch=None):
    import os

    os.environ["UNITUNE_TEST_LONG"] = "v" * 5000
    return ["train", write_job(t, "model: {checkpoint: '${UNITUNE_TEST_LONG}'}\n")], ["job.yaml: ", "once ${UNITUNE_TEST_LONG} is expanded"]


def c_deep_yaml(t):
    (t / "job.yaml").write_text("name: bad\nx: " + "[" * 100000 + "]" * 100000 + "\n")
    return ["train", t / "job.yaml"], ["job.yaml: invalid YAML: nested too deeply"]


def c_store_refused(t):
    port = closed_port()
    return ["train", write_job(t), f"tracking.uri=http://alice:s3cr3t@127.0.0.1:{port}"], \
        ["tracking.uri", "alice:***@127.0.0.1", "cannot connect"]


def c_store_silent(t):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections (the kernel does), never answers
    SOCKETS.append(listener)
    return ["train", write_job(t), f"tracking.uri=http://127.0.0.1:{listener.getsockname()[1]}"], \
        ["tracking.uri", "no answer within 4 s"]


SOCKETS: list[socket.socket] = []


def c_store_folder_missing(t):
    return ["train", write_job(t), f"tracking.uri=sqlite:///{t}/no/such/dir/mlruns.db"], \
        ["tracking.uri", f"folder {t}/no/such/dir does not exist"]


def c_store_read_only(t):
    read_only(t / "store" / "mlruns.db")
    return ["train", write_job(t)], ["tracking.uri", "mlruns.db is not writable", "read-only store"]


def c_store_folder_read_only(t):
    read_only(t / "store")
    return ["train", write_job(t)], ["tracking.uri", f"cannot write in {t}/store"]


def c_store_is_folder(t):
    (t / "dir.db").mkdir()
    return ["train", write_job(t), f"tracking.uri=sqlite:///{t}/dir.db"], ["tracking.uri", "dir.db is a folder"]


def c_store_not_a_database(t):
    (t / "junk.db").write_text("garbage " * 100)
    return ["train", write_job(t), f"tracking.uri=sqlite:///{t}/junk.db"], ["tracking.uri", "file is not a database"]


def c_cwd_read_only(t):
    work = t / "work"
    work.mkdir()
    job = write_job(t)
    job.write_text("name: bad\ntrain: {batch_size: 2, epochs: 1}\n")  # the default stores: in the cwd
    read_only(work)
    CHDIR.append(work)
    return ["train", job], ["tracking.uri", f"cannot write in {work}", "read-only folder"]


CHDIR: list[Path] = []


def c_artifacts_under_file(t):
    (t / "afile").write_text("x")
    return ["train", write_job(t), f"tracking.artifact_location={t}/afile/art"], \
        ["tracking.artifact_location", "afile, which is a file"]


def c_artifacts_read_only(t):
    (t / "arts").mkdir()
    read_only(t / "arts")
    return ["train", write_job(t), f"tracking.artifact_location={t}/arts"], \
        ["tracking.artifact_location", f"cannot write in {t}/arts"]


def c_search_store_refused(t):
    return ["search", write_job(t), "--space", space_file(t), f"tracking.uri=http://127.0.0.1:{closed_port()}"], \
        ["tracking.uri", "cannot connect"]


def c_search_sampler_refused(t):
    space = t / "space.yaml"
    space.write_text("num_trials: 2\nsampler: cmaes\nparams:\n  loss.mining: {type: choice, values: [all, hardest]}\n")
    return ["search", write_job(t), "--space", space], [f"{space}: sampler: cmaes cannot take choice parameter"]


CASES = [
    ("broken JSONL line", c_broken_jsonl),
    ("missing image", c_missing_image),
    ("corrupt image", c_corrupt_image),
    ("garbage bytes as image", c_garbage_image),
    ("truncated image", c_truncated_image),
    ("0-byte image", c_empty_image),
    ("directory where an image should be", c_folder_as_image),
    ("decompression bomb (>2x PIL bound)", c_decompression_bomb),
    ("decompression bomb (1x-2x PIL bound)", c_bomb_below_pil_error),
    ("missing split", c_missing_split),
    ("empty caption", c_empty_caption),
    ("caption not text", c_caption_not_text),
    ("non-UTF-8 manifest", c_not_utf8),
    ("empty manifest", c_empty_manifest),
    ("row without split", c_row_without_split),
    ("CSV captions not a list", c_csv_bad_captions),
    ("Karpathy JSON invalid", c_karpathy_invalid_json),
    ("Karpathy image missing", c_karpathy_missing_image),
    ("Karpathy empty sentence", c_karpathy_empty_sentence),
    ("Karpathy test split not a multiple of data.test_folds", c_karpathy_test_folds),
    ("corrupt video", c_corrupt_video),
    ("truncated video", c_truncated_video),
    ("batch larger than the train split", c_batch_larger_than_split),
    ("every val sample bad (skip)", c_all_skipped),
    ("search: missing image", c_search_bad_data),
    ("loss.gamma .inf", override("loss.gamma=.inf", "loss.gamma: must be a finite number")),
    ("optim.lr .inf", override("optim.lr=.inf", "optim.lr: must be a finite number")),
    ("optim.weight_decay .nan", override("optim.weight_decay=.nan", "optim.weight_decay: must be a finite number")),
    ("search.target .nan", override("search.target=.nan", "search.target: must be a finite number")),
    ("loss.margin .inf", override("loss.margin=.inf", "loss.margin: must be a finite number")),
    ("model.embed_dim 1e9", override("model.embed_dim=1000000000", "model.embed_dim: must be <= 16384")),
    ("synthetic.num_train 1e9", override("data.synthetic.num_train=1000000000", "data.synthetic.num_train: must be <= 100000")),
    ("synthetic.image_size 1e6", override("data.synthetic.image_size=1000000", "data.synthetic.image_size: must be <= 1024")),
    ("synthetic test split not a multiple of data.test_folds",
     override("data.test_folds=3", "data.test_folds: must divide the test split (data.synthetic.num_test 128; got 3)")),
    ("model.image_size 1e6", override("model.image_size=1000000", "model.image_size: must be <= 4096")),
    ("unknown model.preset", override("model.preset=tiny-xl", "model.preset: unknown tiny preset 'tiny-xl'; choose from tiny-s, tiny-m")),
    ("unknown data.preflight", override("data.preflight=some", "data.preflight: must be one of")),
    ("train.batch_size 1e9", override("train.batch_size=1000000000", "train.batch_size: must be <= 65536")),
    ("cache_dir under a regular file", c_cache_dir_under_file),
    ("billion laughs (YAML aliases)", c_billion_laughs),
    ("2 MiB job file", c_huge_job_file),
    ("5000-character value", c_long_value),
    ("env var expands past the bound", c_env_value_too_long),
    ("YAML nested 100000 deep", c_deep_yaml),
    ("tracking server refused (password in URI)", c_store_refused),
    ("tracking server silent", c_store_silent),
    ("sqlite folder missing", c_store_folder_missing),
    ("read-only sqlite store", c_store_read_only),
    ("read-only store folder", c_store_folder_read_only),
    ("sqlite path is a folder", c_store_is_folder),
    ("sqlite file not a database", c_store_not_a_database),
    ("read-only working directory", c_cwd_read_only),
    ("artifact location under a file", c_artifacts_under_file),
    ("read-only artifact location", c_artifacts_read_only),
    ("search: tracking server refused", c_search_store_refused),
    ("search: sampler cannot take the space", c_search_sampler_refused),
]


@pytest.fixture(scope="module")
def earlier_store(tmp_path_factory) -> Path:
    """A sqlite store holding one finished run (made once; each case gets a copy). Also
    imports what the commands import, so a case's seconds are its own work, not the one-time
    import of torch, Ray and MLflow (several seconds on a loaded 2-core machine)."""
    import unitune.preflight  # noqa: F401
    import unitune.search.driver  # noqa: F401
    import unitune.train.run  # noqa: F401
    from unitune.tracking import Tracker

    folder = tmp_path_factory.mktemp("earlier")
    tracker = Tracker(f"sqlite:///{folder}/mlruns.db", str(folder / "art"))
    run = tracker.start_run("bad", "earlier-run")
    tracker.log_metrics(run, {"rsum": 1.5}, step=0)
    tracker.end_run(run)
    return folder / "mlruns.db"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name, case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_in_one_line(name, case, tmp_path, earlier_store, monkeypatch, capsys):
    (tmp_path / "store").mkdir()
    store = tmp_path / "store" / "mlruns.db"
    shutil.copy(earlier_store, store)
    before = digest(store)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("UNITUNE_TEST_LONG", raising=False)
    argv, fragments = case(tmp_path)
    if CHDIR:
        monkeypatch.chdir(CHDIR.pop())
    capsys.readouterr()
    start = time.monotonic()
    try:
        code = main([str(a) for a in argv])
    finally:
        seconds = time.monotonic() - start
        while SOCKETS:
            SOCKETS.pop().close()
        monkeypatch.delenv("UNITUNE_TEST_LONG", raising=False)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    RESULTS.append((name, lines[-1] if lines else f"exit {code}, no message", seconds))
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in lines if line.startswith("unitune: error: ")]
    assert len(errors) == 1 and len(errors[0]) < 400, err
    assert not [line for line in lines if not line.startswith(("unitune: error: ", "unitune: warning: "))], err
    for fragment in fragments:
        assert str(fragment) in errors[0], (fragment, errors[0])
    assert "s3cr3t" not in err
    assert seconds < LIMIT_S, seconds
    assert digest(store) == before  # the earlier runs are untouched


def test_no_ray_and_no_mlflow_run_after_bad_data(tmp_path, monkeypatch, capsys):
    """The data preflight runs before Ray starts and before the store is opened."""
    import ray

    monkeypatch.chdir(tmp_path)
    argv, _ = c_missing_image(tmp_path)
    assert main([str(a) for a in argv]) == 2
    assert not ray.is_initialized()
    assert not (tmp_path / "store").exists()  # the store was never opened (nor created)


@pytest.fixture(scope="module", autouse=True)
def _print_table():
    yield
    if RESULTS:
        width = max(len(name) for name, _, _ in RESULTS)
        print("\nBAD_INPUT_TABLE case | result | seconds")
        for name, result, seconds in RESULTS:
            print(f"{name:<{width}} | {result} | {seconds:.2f}")


def test_bad_video_is_one_line_on_the_real_stderr(tmp_path):
    """decord and ffmpeg write their own lines to file descriptor 2, which capsys does not see:
    run the console command in a subprocess and read what a terminal would show."""
    import os
    import sys

    job = video_job(tmp_path, (tmp_path / "junk.mp4").write_bytes(b"junk" * 200) and "junk.mp4")
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "unitune", "train", str(job)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    seconds = time.monotonic() - start
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("unitune: error: ") and "junk.mp4: cannot open video" in lines[0], done.stderr
    RESULTS.append(("corrupt video, console command (subprocess, with imports)", lines[0], seconds))


def test_existing_experiment_with_unwritable_artifacts(tmp_path, earlier_store):
    """An experiment keeps the artifact location it was made with: that one is probed too."""
    import sqlite3

    from unitune.errors import UserError
    from unitune.tracking import Tracker

    store = tmp_path / "mlruns.db"
    shutil.copy(earlier_store, store)
    (tmp_path / "moved").write_text("a file where the artifacts were")
    with sqlite3.connect(store) as db:
        db.execute("UPDATE experiments SET artifact_location = ? WHERE name = 'bad'", (f"file://{tmp_path}/moved/art",))
    before = digest(store)
    tracker = Tracker(f"sqlite:///{store}", str(tmp_path / "fine"))
    tracker.check(None)  # the job's own location is fine
    with pytest.raises(UserError, match=r"artifact location of experiment 'bad': .*moved, which is a file"):
        tracker.check(None, "bad")
    assert digest(store) == before


def test_store_check_leaves_mlflow_retry_settings_as_they_were(monkeypatch):
    import os

    from unitune.errors import UserError
    from unitune.tracking import Tracker

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    with pytest.raises(UserError):
        Tracker(f"http://127.0.0.1:{closed_port()}").check()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ


def test_run_url_is_masked():
    from unittest.mock import MagicMock

    from unitune.tracking import Tracker

    tracker = Tracker("http://alice:s3cr3t@mlflow.example.com:5000")
    tracker._client = MagicMock()
    tracker._client.get_run.return_value.info.experiment_id = "3"
    assert tracker.run_url("abc") == "http://alice:***@mlflow.example.com:5000/#/experiments/3/runs/abc"


def test_log_lines_are_masked(capsys):
    import logging

    import unitune.tracking  # noqa: F401 - installs the redaction of log records

    handler = logging.StreamHandler()  # any handler, added at any time
    logger = logging.getLogger("mlflow.store.some_module")
    logger.addHandler(handler)
    try:
        logger.warning("retrying %s", "http://a:s3cr3t@h:5000")
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert "retrying http://a:***@h:5000" in err and "s3cr3t" not in err
