"""Starting or joining Ray: the one way ``pipeline extract``, ``heads sweep`` and data-parallel
training (``heads train --data-parallel``) get a cluster."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def start_ray(address: str | None = None) -> bool:
    """Join the cluster at ``address`` (else ``RAY_ADDRESS``, which Ray sets inside a job), or
    start a fresh local Ray; a Ray already initialised in this process is used as it is.

    The workers' stderr (their log records, warnings, tracebacks) is streamed to the driver's,
    each line prefixed with the actor and its pid (``log_to_driver``).

    Returns:
        Whether this call started (or joined) Ray: the caller then shuts it down when done.
    """
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local cluster needs no token
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("joining the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        log.info("starting a local Ray (no --address, no RAY_ADDRESS)")
        # "local": a fresh Ray of our own. Without it ray.init joins whatever cluster
        # /tmp/ray/ray_current_cluster names, even a dead one left by `ray start`.
        ray.init(address="local", include_dashboard=False, log_to_driver=True)
    return True
