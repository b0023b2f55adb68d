"""The weight sync to rollout workers that cannot map learner rank 0's shared file: a broadcast from rank 0.

Rank 0 (the root) and those readers form a process group of their own, separate from the learners'
DeepSpeed group (whose membership is fixed when it starts): gloo over TCP, through a store that rank 0
serves on its node's address. A version is two broadcasts: a header (version, bytes), then the bytes
rank 0 has just written into its shared file, so each reader holds the file's exact layout and reads
it the same way, as views (rlreason.workers.weights.read).

A reader receives on a thread of its own into ``slots`` buffers, as many as rank 0 has files, so the
root never waits for a reader that is busy generating (pipelined mode), and a version is not written
over before it is loaded. A broken group (a reader died) fails the root's send fast; the driver forms
a new one with the restarted reader (the others join once their current call ends) and rank 0 sends
the versions it still holds again.
"""

from __future__ import annotations

import datetime
import socket
import threading
from typing import Optional

import torch
from torch import Tensor

# A join waits for every member: after a restart, for the other workers to finish the call they are in
# (a generation, maybe minutes long); a send longer than this has lost a member. DeepSpeed's default.
TIMEOUT = datetime.timedelta(minutes=30)
CLOSE = -1  # the header's version that ends the readers' threads


def listen() -> socket.socket:
    """The socket the group's store will serve on: this node's address (the one other nodes reach; not
    every interface, as torch's store would), a free port, already listening so no one takes the port."""
    import ray

    host = ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(128)
    return sock


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def _group(where: str, rank: int, size: int, listener: Optional[socket.socket] = None):
    """Join the gloo group of ``size`` members whose store rank 0 serves at ``where`` on ``listener``
    (blocks until all join)."""
    import torch.distributed as dist

    host, port = where.rsplit(":", 1)
    store = dist.TCPStore(host, int(port), size, rank == 0, timeout=TIMEOUT,  # the store closes the socket
                          master_listen_fd=listener.detach() if listener is not None else None)
    opts = dist.ProcessGroupGloo._Options()
    opts._timeout = TIMEOUT
    # this member's interface: the one that reaches the store's host (the loopback one on a single node)
    mine = "127.0.0.1" if host in ("127.0.0.1", "localhost") else _own_address(host, int(port))
    opts._devices = [dist.ProcessGroupGloo.create_device(hostname=mine)]
    return dist.ProcessGroupGloo(store, rank, size, opts)


def _own_address(host: str, port: int) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # no packet is sent: it picks the route
        s.connect((host, port))
        return s.getsockname()[0]


class BroadcastRoot:
    """Learner rank 0's side: one member of the group, the one that sends."""

    def __init__(self, listener: socket.socket, size: int):
        self.size = size
        self.group = _group(address(listener), 0, size, listener)
        self.broken: Optional[str] = None  # why the last send failed (the driver forms a new group)

    def send(self, version: int, buf: Tensor) -> bool:
        """Every reader receives ``buf`` (uint8) as ``version``; False (and ``broken``) when a member is gone."""
        if self.broken or self.group is None:
            return False
        try:
            self.group.broadcast(torch.tensor([version, buf.numel()], dtype=torch.int64), 0).wait()
            if buf.numel():
                self.group.broadcast(buf, 0).wait()
            return True
        except RuntimeError as e:  # a reader died: its connection closed
            self.broken = f"the weight broadcast to {self.size - 1} rollout workers failed ({e})"
            return False

    def close(self) -> None:
        if self.group is not None and not self.broken:
            self.send(CLOSE, torch.zeros(0, dtype=torch.uint8))
        self.group = None


class BroadcastReader:
    """A rollout worker's side: a thread receives every version into its slot; ``buffer`` waits for one."""

    def __init__(self, where: str, rank: int, size: int, slots: int):
        self.group = _group(where, rank, size)
        self.buffers: list[Optional[Tensor]] = [None] * slots
        self.versions = [None] * slots  # the version each slot holds
        self.error: Optional[str] = None  # why the thread stopped early
        self.done = threading.Condition()
        self.thread = threading.Thread(target=self._receive, name="rlreason-weights-broadcast", daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        group = self.group  # kept to the end: ``close`` drops the attribute while this may still receive
        try:
            while True:
                header = torch.zeros(2, dtype=torch.int64)
                group.broadcast(header, 0).wait()
                version, nbytes = header.tolist()
                if version == CLOSE:
                    break
                slot = version % len(self.buffers)
                with self.done:
                    self.versions[slot] = None  # being written
                    if self.buffers[slot] is None or self.buffers[slot].numel() != nbytes:
                        self.buffers[slot] = torch.empty(nbytes, dtype=torch.uint8)
                if nbytes:
                    group.broadcast(self.buffers[slot], 0).wait()
                with self.done:
                    self.versions[slot] = version
                    self.done.notify_all()
        except RuntimeError as e:  # rank 0 closed or lost the group
            self.error = str(e)
        finally:
            with self.done:
                self.error = self.error or "the group was closed"
                self.done.notify_all()

    def buffer(self, version: int, timeout_s: float = TIMEOUT.total_seconds()) -> Optional[Tensor]:
        """The bytes of ``version`` once received; None when this reader's group ended without it."""
        slot = version % len(self.buffers)
        with self.done:
            got = self.done.wait_for(lambda: self.versions[slot] is not None and self.versions[slot] >= version
                                     or self.error is not None, timeout_s)
            if self.versions[slot] == version:
                return self.buffers[slot]
            if self.versions[slot] is not None and self.versions[slot] > version:
                raise RuntimeError(f"weights version {version} was overwritten by version {self.versions[slot]} before "
                                   f"this rollout worker loaded it ({len(self.buffers)} slots)")
        if not got:
            raise TimeoutError(f"weights version {version} did not arrive by broadcast within {timeout_s:.0f}s")
        return None

    def close(self) -> None:
        self.group = None  # the thread ends with the root's close, or with the group's error
