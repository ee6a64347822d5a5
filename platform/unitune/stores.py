"""The rules of store URIs and addresses: which MLflow stores are files of this machine and
where those files are, and which Ray (or dashboard) addresses are on this machine.

A leaf module, like ``choices.py``: it imports nothing of unitune, so the job file's checks
(``config``), the MLflow wrapper (``tracking``), the write probes (``probes``), ``unitune
submit``, the UI and the Ray connector (``cluster``) apply the same rule each.

Stores. A *local* store is kept in this machine's files: a sqlite database
(``sqlite:///rel.db``, ``sqlite:////abs.db``), a ``file:`` URI or a plain path (a one-letter
scheme is a Windows drive). A database or MLflow server (``postgresql://``, ``http(s)://``)
is not, whatever its host. Relative local paths are relative to the working directory
(:func:`resolve_uri` makes them absolute, so trial processes with another cwd reach them).

Addresses. An address is *local* when the processes behind it run on this machine, so they
can open this machine's files (a local store). No address, ``local`` and ``auto`` (the
cluster ``ray start`` began here) are local; so is a loopback host (``127.0.0.0/8``,
``::1``, ``localhost`` in any case) and an unspecified bind address (``0.0.0.0``, ``::``),
whatever the scheme (``ray://``, ``http://``) or port. Any other host is remote, a LAN name
or this machine's own name included: a name is never resolved, and counting it remote errs
on the side of refusing a local store.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

SQLITE = "sqlite:///"  # what precedes a sqlite database's path (four slashes: an absolute one)
DEFAULT_STORE = SQLITE + "mlruns.db"  # tracking.uri of a job that names none (the demo's store)
DEFAULT_ARTIFACTS = "mlartifacts"  # its tracking.artifact_location (a local store's default)
SERVER_SCHEMES = ("http", "https")  # an MLflow tracking server (it serves the artifacts too)
LOCAL_ADDRESSES = (None, "", "local", "auto")


def sqlite_path(uri: str) -> str | None:
    """The database path of a ``sqlite:///`` URI as written (relative or absolute,
    ``:memory:``), or None when ``uri`` is not a sqlite URI."""
    return uri[len(SQLITE) :] if uri.startswith(SQLITE) else None


def sqlite_uri(path: str | os.PathLike) -> str:
    """The ``sqlite:///`` URI of a database file."""
    return SQLITE + str(path)


def _scheme(uri: str) -> str:
    return urlparse(uri).scheme


def is_local_store(uri: str) -> bool:
    """True for stores kept in this machine's files (sqlite, ``file:``, plain paths)."""
    scheme = _scheme(uri)
    return scheme in ("", "file", "sqlite") or len(scheme) == 1


def is_server(uri: str) -> bool:
    """True for an MLflow tracking server (``http(s)://``)."""
    return _scheme(uri) in SERVER_SCHEMES


def local_path(uri: str) -> Path | None:
    """The file or folder of a local store or artifact location, as written (not made
    absolute): ``sqlite:///x.db`` -> ``x.db``, ``file:///a%20b`` -> ``/a b``, a plain path
    -> itself; None for an in-memory or empty sqlite database and for anything not local
    (servers, ``s3://``, ``mlflow-artifacts:/`` ...)."""
    path = sqlite_path(uri)
    if path is not None:
        return None if path.startswith(":memory:") or not path else Path(path)
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:
        return Path(uri)
    return None


def resolve_uri(uri: str, base_dir: str | os.PathLike | None = None) -> str:
    """A local store or artifact URI with its path made absolute against ``base_dir``
    (default: the working directory): ``sqlite:///rel.db`` -> ``sqlite:////abs/rel.db``, a
    plain path or ``file:rel`` -> ``file:///abs``; anything else is returned unchanged."""
    base = Path(base_dir or os.getcwd())
    path = sqlite_path(uri)
    if path is not None:
        if not path or path.startswith(":memory:") or Path(path).is_absolute():  # in memory, or absolute
            return uri
        return sqlite_uri((base / path).resolve())
    local = local_path(uri)
    return uri if local is None else (base / local).resolve().as_uri()


def local_store_path(uri: str) -> Path | None:
    """The absolute database file or folder of a local store (:func:`local_path` of
    :func:`resolve_uri`); None for a server or an in-memory sqlite database."""
    return local_path(resolve_uri(uri))


def sqlite_lock(url: str) -> Path | None:
    """The lock file that serialises creating the sqlite database ``url`` (MLflow's and
    Optuna's migrations race when two processes create one store), or None (not sqlite, or
    a folder this process cannot write: opening the store then reports that)."""
    path = sqlite_path(url)
    if path is None:
        return None
    db = Path(path)
    return db.with_name(db.name + ".lock") if db.parent.is_dir() and os.access(db.parent, os.W_OK) else None


def default_artifacts(uri: str) -> str | None:
    """The artifact location of a job that names none: ``mlartifacts`` beside a local store;
    None for a server or database store (an MLflow server serves its own artifacts, so a job
    submitted to a cluster does not write them into its temporary directory)."""
    return DEFAULT_ARTIFACTS if is_local_store(uri) else None


def address_host(address: str) -> str | None:
    """The host of a Ray address, lower-case, IPv6 without brackets: ``ray://H:10001``,
    ``H:6379``, ``http://H:8265``, ``[::1]:6379``, a bare ``::1``; ``None`` if it has none."""
    netloc = address.split("://", 1)[1] if "://" in address else address
    netloc = netloc.split("/", 1)[0].rsplit("@", 1)[-1]
    try:
        return str(ipaddress.ip_address(netloc.strip("[]")))  # a bare IP (IPv6 without a port)
    except ValueError:
        return urlparse(f"//{netloc}").hostname


def is_remote_address(address: str | None) -> bool:
    """True when the Ray cluster (or dashboard) at ``address`` may run on other machines than
    this one; the rule is in the module docstring."""
    if address is None or address in LOCAL_ADDRESSES:
        return False
    host = address_host(address)
    if host is None:
        return True
    if host == "localhost":
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return True  # a name: not resolved
    return not (ip.is_loopback or ip.is_unspecified)


def local_store_with_remote_cluster(uri: str, ray_address: str | None) -> bool:
    """True when the workers of the Ray cluster at ``ray_address`` could not write to the
    store ``uri``: a local store with a remote cluster."""
    return ray_address is not None and is_local_store(uri) and is_remote_address(ray_address)
