"""Connecting to Ray, for `unitune train` and `unitune search` alike.

No address: a private Ray for this run only, closed to everyone else:

- every Ray process binds 127.0.0.1 (its node address is loopback, so the GCS, the raylet,
  the workers, the agents and the dashboard listen there and nowhere else);
- Ray's token authentication is on, with a token made for this Ray and kept in this
  process's environment (inherited by the Ray processes it starts, written to no file), so a
  process on this machine without the token is refused too;
- the state API (which Ray Train's placement-group cleaner polls) is pinned to this Ray's
  dashboard, so no helper of this run looks for "the latest cluster" in Ray's temporary
  directory and connects to another user's Ray.

An address: that cluster, with Ray's own token handling (``RAY_AUTH_TOKEN`` or
``~/.ray/auth_token``), after a quick TCP check, since ``ray.init`` itself retries an
unreachable address for a minute or more.

Local or remote is ``unitune.stores.is_remote_address``, the one rule for every address
unitune is given (``ray.address``, ``--address``, a dashboard URL).
"""

from __future__ import annotations

import os
import secrets
import socket

from unitune.errors import UserError
from unitune.stores import LOCAL_ADDRESSES

CONNECT_TIMEOUT_S = 5.0
LOOPBACK = "127.0.0.1"
# Environment of a private Ray; restored by shutdown_ray() (tests start several in a row).
_PRIVATE_ENV = (
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
    "RAY_API_SERVER_ADDRESS",
    "RAY_ADDRESS",
)
_saved_env: dict[str, str | None] | None = None


def init_ray(address: str | None, *, log_to_driver: bool = False) -> bool:
    """Start a private local Ray (``address`` None) or connect to ``address``.

    Returns True when this call started or connected Ray (the caller shuts it down with
    :func:`shutdown_ray`), False when Ray was already initialised in this process.

    Raises:
        UserError: the cluster cannot be reached (names the address).
    """
    import ray

    if ray.is_initialized():
        return False
    check_reachable(address)
    try:
        if address is None:
            _start_private(log_to_driver)
        else:
            ray.init(address=address, log_to_driver=log_to_driver)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        _restore_env()
        where = address or f"a local Ray on {LOOPBACK}"
        raise UserError(f"ray.address: cannot connect to {where}: {str(exc).splitlines()[0]}") from exc
    return True


def shutdown_ray() -> None:
    """Shut Ray down and restore the environment a private Ray changed."""
    import ray

    ray.shutdown()
    _restore_env()


def _start_private(log_to_driver: bool) -> None:
    import ray
    from ray._private import ray_constants
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]  # not in ray's _raylet.pyi

    global _saved_env
    port = free_port()
    _saved_env = {k: os.environ.get(k) for k in _PRIVATE_ENV}
    os.environ.pop("RAY_ADDRESS", None)  # "local" must not be redirected to another cluster
    os.environ.update(
        {
            # Ray turns 127.0.0.1 into the machine's address unless it thinks it runs a
            # single-machine cluster; this switch (meant for macOS/Windows) keeps loopback.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_API_SERVER_ADDRESS": f"http://{LOOPBACK}:{port}",
        }
    )
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at import; this process imported Ray already
    Config.initialize("")  # the auth mode is cached by Ray's C++ config
    AuthenticationTokenLoader.instance().reset_cache()
    context = ray.init(
        address="local",
        include_dashboard=True,
        dashboard_host=LOOPBACK,
        dashboard_port=port,
        log_to_driver=log_to_driver,
        _node_ip_address=LOOPBACK,
        configure_logging=False,
    )
    url = context.dashboard_url or ""
    if not url.endswith(f":{port}"):  # the port was taken between free_port() and Ray binding it
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://{url}" if "://" not in url else url


def _restore_env() -> None:
    global _saved_env
    if _saved_env is None:
        return
    for key, value in _saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _saved_env = None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def check_reachable(address: str | None) -> None:
    """Fail fast on a ``host:port`` (or ``ray://host:port``) nobody listens on.

    Raises:
        UserError: the port cannot be connected to (names the address).
    """
    if address in LOCAL_ADDRESSES:
        return
    netloc = address.split("://", 1)[1] if "://" in address else address
    host, _, port = netloc.rpartition(":")
    if not port.isdigit():
        return  # let Ray interpret it
    try:
        socket.create_connection((host.strip("[]") or LOOPBACK, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise UserError(
            f"ray.address: cannot connect to the Ray cluster at {address}: "
            f"{exc.strerror or exc} (is it running? `ray status --address {netloc}`)"
        ) from exc
