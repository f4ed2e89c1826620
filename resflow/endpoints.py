"""Is anything listening at a cluster address? Asked once, in seconds, before a run starts.

A Dask client waits its whole connect timeout (20 s) on a closed port, and a Spark driver
retries an unreachable standalone master for a minute; checking the TCP endpoint first turns
a typo in an address into an immediate refusal naming the setting, before any work.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from resflow.errors import BackendError

CONNECT_TIMEOUT_S = 5.0
"""Seconds to wait for a TCP connection before calling an endpoint unreachable."""


def host_ports(url: str) -> list[tuple[str, int]]:
    """The ``(host, port)`` pairs of ``scheme://host:port[,host:port...]``.

    Raises
    ------
    ValueError
        when the URL has no scheme, host or port.

    Examples
    --------
    >>> host_ports("spark://127.0.0.1:7077,10.0.0.2:7077")
    [('127.0.0.1', 7077), ('10.0.0.2', 7077)]
    """
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        raise ValueError(f"{url!r} is not of the form scheme://host:port")
    pairs = []
    for item in parts.netloc.split(","):
        endpoint = urlsplit(f"//{item}")
        if not endpoint.hostname or endpoint.port is None:
            raise ValueError(f"{item!r} in {url!r} has no host:port")
        pairs.append((endpoint.hostname, endpoint.port))
    return pairs


def check_endpoint(setting: str, url: str, fix: str) -> None:
    """Refuse ``url`` unless something accepts a TCP connection at one of its host:ports.

    Parameters
    ----------
    setting
        The config field holding the address (``"<engine>.<field>"``), named in the
        error.
    url
        ``scheme://host:port``; several comma-separated host:ports (standalone HA masters)
        pass when any answers.
    fix
        What the user should do, for the error.

    Raises
    ------
    BackendError
        naming ``setting`` and the address, for a malformed or unreachable address.
    """
    try:
        pairs = host_ports(url)
    except ValueError as exc:
        raise BackendError(f"{setting} {url!r}", f"not a valid address ({exc})", fix) from None
    errors = []
    for host, port in pairs:
        try:
            with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
                return
        except OSError as exc:
            errors.append(f"{host}:{port}: {exc.strerror or exc}")
    raise BackendError(f"{setting} {url!r}", f"nothing answers there ({'; '.join(errors)})", fix)
