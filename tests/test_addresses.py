"""One local/remote rule for every address and store URI (``unitune.stores``): local means the processes behind it run on this machine, so they
can open this machine's files; loopback and unspecified bind addresses are local, any
other host (a LAN name included: names are not resolved) is remote."""

from __future__ import annotations

import pytest

from pathlib import Path

from unitune import probes
from unitune.config import JobSpec
from unitune.errors import UserError
from unitune.stores import address_host, is_local_store, is_remote_address, local_path, local_store_path

ADDRESSES = [  # (address, host, remote)
    (None, None, False),               # a private Ray started by this process
    ("local", "local", False),
    ("auto", "auto", False),           # the cluster `ray start` began on this machine
    ("0.0.0.0:6379", "0.0.0.0", False),  # the unspecified bind address: this machine
    ("[::]:6379", "::", False),
    ("127.0.0.1", "127.0.0.1", False),
    ("127.0.0.1:6379", "127.0.0.1", False),
    ("127.0.1.1:6379", "127.0.1.1", False),  # all of 127.0.0.0/8 is loopback
    ("localhost", "localhost", False),
    ("localhost:6379", "localhost", False),
    ("LOCALHOST", "localhost", False),   # host names are case-insensitive
    ("[::1]:6379", "::1", False),
    ("::1", "::1", False),
    ("ray://127.0.0.1:10001", "127.0.0.1", False),
    ("ray://LOCALHOST:10001", "localhost", False),
    ("ray://10.0.0.5:10001", "10.0.0.5", True),
    ("ray://head.cluster:10001", "head.cluster", True),
    ("http://127.0.0.1:8265", "127.0.0.1", False),  # a dashboard (unitune submit)
    ("http://[::1]:8265/", "::1", False),
    ("http://head:8265", "head", True),
    ("https://user:pw@ray.example.com", "ray.example.com", True),
    ("10.0.0.5:6379", "10.0.0.5", True),
    ("gpu-box.lan:6379", "gpu-box.lan", True),  # a LAN name, not resolved: remote
    ("gpu-box", "gpu-box", True),
]


@pytest.mark.parametrize("address, host, remote", ADDRESSES, ids=lambda v: repr(v))
def test_one_rule_for_ray_and_dashboard_addresses(address, host, remote):
    if address not in (None, "local", "auto"):
        assert address_host(address) == host
    assert is_remote_address(address) is remote


@pytest.mark.parametrize("uri, local", [
    ("sqlite:///mlruns.db", True),
    ("sqlite:////abs/mlruns.db", True),
    ("mlruns", True),
    ("/abs/mlruns", True),
    ("file:///abs/mlruns", True),
    ("C:\\mlruns", True),                      # a Windows drive, not a scheme
    ("http://127.0.0.1:5000", False),          # a server: reachable over the network
    ("https://mlflow.example.com", False),
    ("postgresql://db.lan/mlflow", False),
])
def test_local_store(uri, local):
    assert is_local_store(uri) is local


@pytest.mark.parametrize("uri, path", [
    ("sqlite:///runs/mlruns.db", "runs/mlruns.db"),
    ("sqlite:////abs/mlruns.db", "/abs/mlruns.db"),
    ("sqlite:///:memory:", None),
    ("sqlite:///", None),
    ("file:///abs/my%20runs", "/abs/my runs"),       # percent-escapes decoded
    ("file:rel/mlruns", "rel/mlruns"),
    ("mlruns", "mlruns"),
    ("/abs/mlruns", "/abs/mlruns"),
    ("http://127.0.0.1:5000", None),
    ("postgresql://db.lan/mlflow", None),
    ("mlflow-artifacts:/", None),
    ("s3://bucket/runs", None),
])
def test_one_rule_for_where_a_local_store_is(uri, path, tmp_path, monkeypatch):
    # The write probes and the store look-ups (export, results, ui) read the same path:
    # local_path as written, local_store_path the same made absolute against the cwd.
    monkeypatch.chdir(tmp_path)
    assert local_path(uri) == (None if path is None else Path(path))
    expected = None if path is None else (tmp_path / path).resolve()
    assert local_store_path(uri) == expected


def test_the_write_probe_reads_the_store_where_the_look_up_does(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my runs").write_text("a file, not a folder")
    uri = (tmp_path / "my runs").as_uri()  # file:///.../my%20runs
    assert local_store_path(uri) == tmp_path / "my runs"
    with pytest.raises(UserError, match="is a file, not an MLflow file-store folder"):
        probes.probe_store(uri)


@pytest.mark.parametrize("address, refused", [(a, r) for a, _, r in ADDRESSES])
def test_a_job_refuses_a_local_store_exactly_with_a_remote_cluster(address, refused):
    job = {"name": "x", "ray": {"address": address}}
    if refused:
        with pytest.raises(ValueError, match="local store"):
            JobSpec.model_validate(job)
    else:
        JobSpec.model_validate(job)
    JobSpec.model_validate({**job, "tracking": {"uri": "http://mlflow.lan:5000"}})


REFUSALS = [(a, r) for a, _, r in ADDRESSES if a is not None]


@pytest.mark.parametrize("address, refused", REFUSALS)
def test_the_store_check_of_train_search_and_submit_agree(address, refused, tmp_path, monkeypatch):
    """The job file, ``Tracker.check`` (train, search, study) and ``unitune submit`` refuse a
    local store for the same addresses: the rule of ``ADDRESSES``."""
    from unitune import submit
    from unitune.errors import UserError
    from unitune.tracking import Tracker

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    if refused:
        with pytest.raises(UserError, match="is a local store that the workers of the remote cluster"):
            Tracker(uri).check(address)
        with pytest.raises(UserError, match="is a local store that the workers .* --allow-local-store"):
            submit.plan_submission(JobSpec.model_validate({"name": "x", "tracking": {"uri": uri}}), tmp_path / "job.yaml",
                                   [], address=address)
    else:
        Tracker(uri).check(address)
