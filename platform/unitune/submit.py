"""Running a search on a Ray cluster via the Ray Jobs API: what ``unitune submit`` sends
and the client that ``submit``, ``status``, ``logs`` and ``stop`` (``unitune.commands``) use.

``submit`` uploads what the search reads (the job file, its search space, and the data and
model files the job names inside the project directory; :func:`upload_files`) as the job's
``working_dir`` and runs ``python -m unitune search JOB`` there, on the cluster's head
node. The cluster's Python must have unitune installed (``pip install unitune`` in its
image); for a cluster started on this machine, this machine's Python is used.

The address is the dashboard's HTTP address, ``http://HEAD:8265``: ``--address``, else
``RAY_API_SERVER_ADDRESS`` or ``RAY_ADDRESS``, else ``http://127.0.0.1:8265``.

Token authentication (Ray's ``RAY_AUTH_MODE=token``): when the dashboard asks for a token,
it is read as Ray reads it: ``RAY_AUTH_TOKEN``, else the file ``RAY_AUTH_TOKEN_PATH``,
else ``~/.ray/auth_token``. It is sent only to a cluster that asks for it.

Ray is imported only when a command runs, so ``unitune --help`` stays fast.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from unitune.errors import UserError, first_line, shorten
from unitune.search.storage import DEFAULT_TUNE_DIR
from unitune.stores import is_local_store, is_remote_address, resolve_uri
from unitune.tracking import unreachable_store

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
PROBE_TIMEOUT_S = 5.0  # one request, no retries: an unreachable cluster fails in seconds
# The dashboard refuses a larger request (HTTP 413): Ray's DASHBOARD_CLIENT_MAX_SIZE.
UPLOAD_LIMIT = 100 * 2**20
FORWARDED_PREFIXES = ("UNITUNE_", "MLFLOW_")  # MLflow credentials, unitune settings


@dataclass(frozen=True)
class Submission:
    """What ``submit`` sends: a shell entrypoint, a Ray runtime environment (its
    ``working_dir`` is added by :func:`stage`), and the files uploaded: ``files``, relative
    to ``project`` (see :func:`upload_files`)."""

    entrypoint: str
    runtime_env: dict
    metadata: dict
    project: Path
    files: list[str]


# ---- arguments -------------------------------------------------------------------------


def add_address_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        metavar="URL",
        help="the Ray dashboard, http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS, "
        f"RAY_ADDRESS, or {DEFAULT_ADDRESS})",
    )


def add_job_id_arguments(parser: argparse.ArgumentParser) -> None:
    """``JOB_ID [--address URL]``: the arguments of ``status``, ``logs`` and ``stop``."""
    parser.add_argument("job_id", metavar="JOB_ID", help="the id printed by `unitune submit`")
    add_address_argument(parser)


# ---- pieces ----------------------------------------------------------------------------


def resolve_address(address: str | None) -> str:
    """The dashboard URL without a trailing slash. Raises ``UserError`` for a non-HTTP address."""
    source = "--address"
    if not address:
        for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
            if os.environ.get(name):
                address, source = os.environ[name], name
                break
        else:
            return DEFAULT_ADDRESS
    if not address.startswith(("http://", "https://")):
        raise UserError(f"{source} {address!r}: expected the Ray dashboard's HTTP address, e.g. http://HEAD:8265")
    return address.rstrip("/")


def find_token() -> tuple[str, str] | None:
    """Ray's auth token and where it came from, read by Ray's own loader (``RAY_AUTH_TOKEN``,
    else the file ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``); ``None`` if absent.

    Raises ``UserError`` when ``RAY_AUTH_TOKEN_PATH`` names a missing or empty file.
    """
    # Ray 2.60 has no public name for it; _raylet is compiled and its stub lacks the name
    from ray._raylet import AuthenticationTokenLoader  # type: ignore[attr-defined]
    from ray.exceptions import AuthenticationError

    loader = AuthenticationTokenLoader.instance()
    loader.reset_cache()  # it caches the first lookup; the environment may have changed since
    try:
        if not loader.has_token(ignore_auth_mode=True):
            return None
        token = loader.get_raw_token(ignore_auth_mode=True)
    except AuthenticationError as exc:
        raise UserError(f"RAY_AUTH_TOKEN_PATH: {shorten(first_line(exc).split('. ')[0], 200)}") from None
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        source = "RAY_AUTH_TOKEN"
    else:
        source = str(Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser())
    return token, source


def probe(address: str) -> dict:
    """Check that ``address`` is a Ray dashboard we may use; return the headers to send.

    One request with a short timeout, then one with the token if the cluster asks for it.

    Raises:
        UserError: unreachable, not a Ray dashboard, token needed but absent, token refused.
    """
    import requests

    url = f"{address}/api/version"
    headers: dict = {}
    try:
        response = requests.get(url, timeout=PROBE_TIMEOUT_S)
        if response.status_code == 401:
            found = find_token()
            if found is None:
                raise UserError(
                    f"the Ray cluster at {address} requires token authentication and no "
                    "token was found: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, or put "
                    "it in ~/.ray/auth_token)"
                )
            token, source = found
            headers = {"Authorization": f"Bearer {token}"}
            response = requests.get(url, timeout=PROBE_TIMEOUT_S, headers=headers)
            if response.status_code in (401, 403):
                raise UserError(f"the Ray cluster at {address} refused the auth token from {source}")
    except requests.RequestException as exc:
        reason = type(exc).__name__ if isinstance(exc, requests.Timeout) else "connection failed"
        raise UserError(
            f"cannot reach the Ray dashboard at {address} ({reason}); is the cluster "
            "up and is this its dashboard address (http://HEAD:8265)?"
        ) from None
    try:
        version = response.json()["ray_version"] if response.ok else None
    except (ValueError, KeyError, TypeError):
        version = None
    if version is None:
        raise UserError(f"{address} is not a Ray dashboard (GET /api/version: HTTP {response.status_code})")
    return headers


def connect(address: str):
    """A ``JobSubmissionClient`` for the dashboard at ``address`` (see :func:`probe`)."""
    headers = probe(address)
    from ray.job_submission import JobSubmissionClient

    # Ray lets RAY_API_SERVER_ADDRESS/RAY_ADDRESS override the address argument; the
    # address resolved here (--address first) must win.
    with _environ(RAY_API_SERVER_ADDRESS=address):
        try:
            return JobSubmissionClient(address, headers=headers)
        except Exception as exc:  # ConnectionError, RuntimeError (version), AuthenticationError
            raise UserError(f"Ray dashboard at {address}: {first_line(exc)}") from None


def plan_submission(
    job,
    job_file: Path,
    overrides: list[str],
    *,
    address: str,
    python: str | None = None,
    allow_local_store: bool = False,
    resume: bool = False,
    excludes: Sequence[str] = (),
) -> Submission:
    """The entrypoint and runtime environment that run ``unitune search`` on the cluster.

    ``job``: the validated ``JobSpec`` of ``job_file`` with ``overrides`` applied.
    The project is the current directory when it holds the job and search-space files (so
    paths relative to it mean the same there), else their nearest common directory; only the
    files the run reads are uploaded from it (:func:`upload_files`, less ``excludes``).
    Local stores are passed as absolute paths, so a search on a cluster on this machine
    logs into this directory's store, not a copy inside Ray's session.

    Ray Tune's state must outlive the job for ``--resume``: ``search.storage`` (a shared
    path or a URI such as ``s3://``), or, for a cluster on this machine, ``.unitune/tune``
    of this directory (passed as an absolute path, like local stores).

    Raises:
        UserError: a local MLflow store with a remote cluster (unless ``allow_local_store``);
            ``resume`` of a search on a remote cluster without ``search.storage``.
    """
    reason = unreachable_store(job.tracking.uri, address)
    if reason is not None and not allow_local_store:
        raise UserError(
            f"{job_file}: tracking.uri: {reason} (or --allow-local-store if the cluster sees the same path)"
        )
    job_file = job_file.resolve()
    space_file = Path(job.search.space).resolve()
    working_dir = _working_dir(job_file, space_file)
    remote = is_remote_address(address)
    if python is None:
        python = "python" if remote else sys.executable
    argv = [
        *shlex.split(python),
        "-m",
        "unitune",
        "search",
        str(job_file.relative_to(working_dir)),
        "--space",
        str(space_file.relative_to(working_dir)),
        *overrides,
        *cluster_overrides(job, job_file, address, resume),
        *(["--resume"] if resume else []),
    ]
    return Submission(
        entrypoint=shlex.join(argv),
        runtime_env={"env_vars": job_env([job_file, space_file])},
        metadata={"unitune_job": job.name, "unitune_job_file": job_file.name},
        project=working_dir,
        files=upload_files(job, job_file, space_file, working_dir, excludes),
    )


def cluster_overrides(job, job_file: Path, address: str, resume: bool) -> list[str]:
    """The job keys the search on the cluster runs with: it joins the cluster it runs on;
    a local store (and a local artifact location) as absolute paths; Ray Tune's state in
    this directory's ``.unitune/tune`` for a cluster on this machine.

    Raises:
        UserError: ``resume`` of a search on a remote cluster without ``search.storage``.
    """
    out = ["ray.address=auto"]  # the driver joins the cluster it runs on
    if is_local_store(job.tracking.uri):
        out.append(f"tracking.uri={resolve_uri(job.tracking.uri)}")
        location = job.tracking.artifact_location
        if location is not None and "://" not in location:
            out.append(f"tracking.artifact_location={Path(location).resolve()}")
    if job.search.storage is not None:
        return out
    remote = is_remote_address(address)
    if remote and resume:
        raise UserError(
            f"{job_file}: search.storage: not set, so the interrupted search's Ray Tune "
            f"state stayed in the job's temporary directory on {address}; set "
            "search.storage to a path on the cluster's shared filesystem or a URI Ray "
            "Tune accepts (s3://bucket/unitune, gs://...) for searches to be resumable"
        )
    if not remote:  # the cluster shares this machine's disk: keep the state here
        out.append(f"search.storage={(Path.cwd() / DEFAULT_TUNE_DIR).resolve()}")
    return out


def job_env(files: list[Path]) -> dict[str, str]:
    """The environment variables of the job on the cluster (:func:`forwarded_env` of
    ``files``, unbuffered output, the stop grace period)."""
    env = forwarded_env(files)
    env["PYTHONUNBUFFERED"] = "1"  # logs reach `unitune logs --follow` as they are written
    # `unitune stop` sends SIGTERM, then SIGKILL after this many seconds (Ray's default: 3):
    # time for the search to close its record and save Tune's state.
    env.setdefault("RAY_JOB_STOP_WAIT_TIME_S", "60")
    return env


def upload_files(job, job_file: Path, space_file: Path, project: Path, excludes: Sequence[str] = ()) -> list[str]:
    """What a submitted search reads, as paths relative to ``project``, sorted: the job file,
    its search space, and the job's data (``data.annotations``; every file under
    ``data.root``) and local model paths (``model.checkpoint``, ``model.image_encoder``,
    ``model.text_encoder``) that lie inside ``project``. What lies outside is not uploaded:
    the cluster must have it (a ``${VAR}`` is resolved there).

    ``excludes``: glob patterns (``*.mp4``, ``data/videos``) matched against the relative
    path and each of its leading directories, and against their names; a match is left out
    (the job and space files always go).
    """
    project = project.resolve()
    always = {job_file.resolve(), space_file.resolve()}
    chosen = set(always)
    for ref in (
        job.data.annotations,
        job.data.root,
        job.model.checkpoint,
        job.model.image_encoder,
        job.model.text_encoder,
    ):
        if not ref or "${" in str(ref):
            continue
        path = Path(ref) if Path(ref).is_absolute() else job_file.parent / ref
        path = path.resolve()
        if path == project or not path.is_relative_to(project) or not path.exists():
            continue
        chosen |= {p for p in path.rglob("*") if p.is_file()} if path.is_dir() else {path}
    return sorted(
        str(p.relative_to(project)) for p in chosen if p in always or not _excluded(p.relative_to(project), excludes)
    )


def _excluded(rel: Path, patterns) -> bool:
    leading = [Path(*rel.parts[:i]) for i in range(1, len(rel.parts) + 1)]
    return any(
        fnmatch.fnmatchcase(p.as_posix(), pat.rstrip("/")) or fnmatch.fnmatchcase(p.name, pat.rstrip("/"))
        for pat in patterns
        for p in leading
    )


def stage(submission: Submission, directory: Path) -> dict:
    """Copy the submission's files into ``directory`` (their relative paths kept); return the
    runtime environment with ``directory`` as its ``working_dir``."""
    for rel in submission.files:
        target = directory / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(submission.project / rel, target)
    return {**submission.runtime_env, "working_dir": str(directory)}


def upload_error(exc: Exception, submission: Submission, address: str) -> str:
    """The one line for a rejected submission; an upload over the dashboard's size limit
    (HTTP 413) says what to do."""
    text = first_line(exc)
    if "413" in text or "request body size" in text.lower():
        sizes = {f: (submission.project / f).stat().st_size for f in submission.files}
        return (
            f"Ray cluster {address} refused the upload: {len(sizes)} files, {sum(sizes.values()) / 2**20:.0f} MiB "
            f"(the dashboard takes at most {UPLOAD_LIMIT // 2**20} MiB; largest: {max(sizes, key=sizes.__getitem__)}); "
            "leave data out with --exclude PATTERN and give the job a data.root the cluster has"
        )
    return f"Ray cluster {address} rejected the job: {text}"


def forwarded_env(files: list[Path]) -> dict[str, str]:
    """Environment variables the job needs on the cluster: the ``${VAR}``s its files
    reference (when set here) and every ``UNITUNE_*``/``MLFLOW_*`` variable."""
    from unitune.config.loading import ENV_VAR  # the job schema (pydantic): not for --help

    names = {m.group(1) for f in files for m in ENV_VAR.finditer(f.read_text(encoding="utf-8"))}
    names |= {n for n in os.environ if n.startswith(FORWARDED_PREFIXES)}
    return {n: os.environ[n] for n in sorted(names) if os.environ.get(n)}


def _working_dir(job_file: Path, space_file: Path) -> Path:
    cwd = Path.cwd().resolve()
    if all(f.is_relative_to(cwd) for f in (job_file, space_file)):
        return cwd
    common = Path(os.path.commonpath([job_file.parent, space_file.parent]))
    if common == Path(common.anchor) or common == Path.home():
        raise UserError(
            f"{job_file} and {space_file} share no project directory to upload; "
            "run `unitune submit` from the directory that holds both"
        )
    return common


def job_info(client, job_id: str, address: str):
    try:
        return client.get_job_info(job_id)
    except RuntimeError as exc:
        if "404" in str(exc) or "does not exist" in str(exc):
            raise UserError(f"no job {job_id!r} on the Ray cluster at {address}") from None
        raise UserError(f"Ray dashboard at {address}: {first_line(exc)}") from None


@contextmanager
def _environ(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
