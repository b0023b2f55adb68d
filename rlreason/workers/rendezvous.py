"""The learners' process group on one machine, reachable from this machine only.

DeepSpeed's usual rendezvous (``env://``) makes learner rank 0 run torch's TCPStore, which listens on
every interface of the machine, and gloo picks the interface of the host name. When the rendezvous
address is the loopback one (a local run: cluster.placement=none), the store here listens on a socket
bound to 127.0.0.1 and gloo is pointed at the loopback interface; DeepSpeed then finds the group
already made and uses it. A rendezvous on another address (learners in placement slots, maybe on
several nodes) is left to DeepSpeed, since other nodes must reach it.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys

LOOPBACK = ("127.0.0.1", "localhost")
TIMEOUT = datetime.timedelta(minutes=30)  # DeepSpeed's default for its process group


def join_loopback_group(master: str, rank: int, world_size: int, backend: str):
    """Make the default process group through a 127.0.0.1 store if ``master`` is loopback.

    Returns the rank-0 listening socket (keep it alive: the store serves on its descriptor), or None
    when ``master`` is not loopback and nothing was done."""
    import torch.distributed as dist

    host, port = master.rsplit(":", 1)
    if host not in LOOPBACK or dist.is_initialized():
        return None
    listener = None
    if rank == 0:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", int(port)))
        listener.listen(128)
    store = dist.TCPStore("127.0.0.1", int(port), world_size, rank == 0, timeout=TIMEOUT,
                          master_listen_fd=listener.fileno() if listener else None)
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=TIMEOUT)
    return listener
