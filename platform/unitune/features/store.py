"""Cache entries on disk: one safetensors file per entry, verified, written atomically, built once.

An entry ``NAME`` in a cache directory is three files:

- ``NAME.safetensors``: the tensors (safetensors: no pickle, nothing executes on load);
- ``NAME.json``: the sidecar, written after the data: the entry's full key, the data
  file's size in bytes and its sha256;
- ``NAME.lock``: the file lock (``unitune.locks.file_lock``: ``filelock``, an ``flock`` on
  Unix) under which the entry is built.

A reader trusts an entry only when the sidecar's key equals the one it asks for and the
data file has the recorded size and digest; anything else (missing, partial, truncated,
corrupt, another format version) is rebuilt under the lock. Data and sidecar go to a
temporary name first and are renamed into place, so a crash or a full disk never leaves a
file a later reader would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file

from unitune.errors import UserError
from unitune.locks import file_lock

KEY = "data.feature_cache"
_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def paths(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """``(data, sidecar, lock)`` paths of entry ``name``."""
    return directory / f"{name}.safetensors", directory / f"{name}.json", directory / f"{name}.lock"


def read_entry(directory: Path, name: str, key: dict) -> dict[str, torch.Tensor] | None:
    """The tensors of a valid entry, or None when it is missing, partial or corrupt.

    The file is read into memory (not memory-mapped): an entry truncated on disk while a
    trial trains on it cannot fault the trial.
    """
    data, sidecar, _ = paths(directory, name)
    try:
        meta = json.loads(sidecar.read_text())
        if meta.get("key") != key or data.stat().st_size != meta.get("size"):
            return None
        content = data.read_bytes()
        if len(content) != meta.get("size") or hashlib.sha256(content).hexdigest() != meta.get("sha256"):
            return None
        return load(content)
    except (OSError, ValueError, SafetensorError):  # JSONDecodeError is a ValueError
        return None


def _replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, final)


def write_entry(directory: Path, name: str, key: dict, tensors: dict[str, torch.Tensor]) -> int:
    """Write entry ``name`` atomically; returns its data size in bytes.

    Raises:
        UserError: the directory is not writable or the disk is full (naming the path); no
            file that a reader would trust is left behind.
    """
    data, sidecar, _ = paths(directory, name)
    tmp_data, tmp_sidecar = data.with_suffix(f".{os.getpid()}.tmp"), sidecar.with_suffix(f".{os.getpid()}.tmp")
    try:
        sidecar.unlink(missing_ok=True)  # an old sidecar must never vouch for new data
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_data)
        size, sha = tmp_data.stat().st_size, file_sha256(tmp_data)
        _replace(tmp_data, data)
        tmp_sidecar.write_text(json.dumps({"key": key, "size": size, "sha256": sha}, indent=1))
        _replace(tmp_sidecar, sidecar)
        return size
    except OSError as exc:
        for path in (tmp_data, tmp_sidecar, sidecar):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        raise UserError(f"{KEY}: cannot write the feature cache entry {data}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def locked(directory: Path, name: str) -> Iterator[None]:
    """Hold the entry's file lock (exclusive; released when the holder exits or dies)."""
    lock = paths(directory, name)[2]
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock.touch()
    except OSError as exc:
        raise UserError(f"{KEY}: cannot write the feature cache directory {directory}: {exc.strerror or exc}") from None
    with file_lock(lock):
        yield


def get_or_build(
    directory: Path, name: str, key: dict, build: Callable[[], dict[str, torch.Tensor]]
) -> tuple[dict[str, torch.Tensor], int]:
    """A valid entry's tensors, building (and writing) it first when needed.

    Concurrent callers on one machine (or on a shared file system with working locks)
    build an entry once: the first takes the lock and builds, the others wait and read it.

    Returns:
        ``(tensors, bytes_written)``: ``bytes_written`` is 0 when the entry was reused.
    """
    tensors = read_entry(directory, name, key)
    if tensors is not None:
        return tensors, 0
    with locked(directory, name):
        tensors = read_entry(directory, name, key)  # built by another process while we waited
        if tensors is not None:
            return tensors, 0
        tensors = build()
        return tensors, write_entry(directory, name, key, tensors)


def check_writable(directory: Path) -> None:
    """Raise UserError (naming the directory) unless files can be created in it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"{KEY}: cannot write the feature cache directory {directory}: {exc.strerror or exc}") from None
