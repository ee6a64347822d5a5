"""Connecting to Ray, for `unitune train` and `unitune search` alike.

No address: a private local Ray bound to 127.0.0.1, its dashboard too, without token auth
(nothing else can reach it). The dashboard serves Ray's state API, which Ray Train's
placement-group cleaner polls: without it the cleaner cannot release the placement groups
of a stopped run and warns every few seconds. An address: that cluster, with Ray's own token
handling (``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``), after a quick TCP check, since
``ray.init`` itself retries an unreachable address for a minute or more.
"""

from __future__ import annotations

import os
import socket

from unitune.errors import UserError

CONNECT_TIMEOUT_S = 5.0


def init_ray(address: str | None, *, log_to_driver: bool = False) -> bool:
    """Start a local Ray (``address`` None) or connect to ``address``.

    Returns True when this call started or connected Ray (the caller shuts it down), False
    when Ray was already initialised in this process.

    Raises:
        UserError: the cluster cannot be reached (names the address).
    """
    import ray

    if ray.is_initialized():
        return False
    check_reachable(address)
    try:
        if address is None:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1",
                     log_to_driver=log_to_driver, _node_ip_address="127.0.0.1", configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=log_to_driver)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a local Ray on 127.0.0.1"
        raise UserError(f"ray.address: cannot connect to {where}: {str(exc).splitlines()[0]}") from exc
    return True


def check_reachable(address: str | None) -> None:
    """Fail fast on a ``host:port`` (or ``ray://host:port``) nobody listens on.

    Raises:
        UserError: the port cannot be connected to (names the address).
    """
    if address in (None, "", "local", "auto"):
        return
    netloc = address.split("://", 1)[1] if "://" in address else address
    host, _, port = netloc.rpartition(":")
    if not port.isdigit():
        return  # let Ray interpret it
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise UserError(f"ray.address: cannot connect to the Ray cluster at {address}: "
                        f"{exc.strerror or exc} (is it running? `ray status --address {netloc}`)") from exc
