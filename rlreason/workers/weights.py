"""The weight sync without the driver: the learner publishes, rollout workers read, the driver only
passes a small handle between them.

- **Same node: a shared-memory file.** Learner rank 0 copies every tensor once into a file in
  ``/dev/shm`` (its layout in the handle); a rollout worker on that node maps the file and loads its
  model straight from the mapped tensors. Versions rotate over ``slots`` files, so a worker that has
  not yet loaded version v never sees a later one written over it (2 slots for the synchronous loop,
  max_staleness + 1 for the pipelined one, where loads queue behind generations).
- **Another node: a broadcast from rank 0** (rlreason.workers.broadcast) of the same bytes, which the
  reader receives into buffers of its own and reads the same way (``cluster.weight_sync=auto``);
  ``cluster.weight_sync=object_store`` has rank 0 put a copy in Ray's object store instead, which the
  reader fetches; ``broadcast`` sends to every rollout worker, its own node's too. The driver holds
  only the handle.

With ZeRO-3 the learner gathers one module's parameters at a time while it publishes
(``zero3_tensors``), so no rank holds the whole model at once. The driver's memory does not grow
with the model. Files are named after the learner's
process id, removed when the learner exits, and those of dead processes are removed on start.
(Colocated vLLM on GPUs has its own CUDA-IPC path: rlreason.rollout.vllm_engine.)
"""

from __future__ import annotations

import atexit
import glob
import os
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch
from torch import Tensor

SHM_DIR = "/dev/shm"
ALIGN = 64  # bytes: every tensor starts on a cache line


@dataclass
class WeightsHandle:
    """Where version ``version`` of the policy is: a shared file (same node) or an object reference."""

    version: int
    node_id: str  # the Ray node of learner rank 0 (a reader elsewhere uses ``ref``)
    path: Optional[str] = None  # the shared-memory file
    layout: list[tuple[str, str, list[int], int]] = field(default_factory=list)  # name, dtype, shape, offset
    ref: Any = None  # ObjectRef of the state dict, for readers on other nodes (None when all share the node)
    broadcast: bool = False  # sent to the readers in rank 0's broadcast group (rlreason.workers.broadcast)


def node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def slots_for(trainer) -> int:
    """Versions kept at once: 2 for the synchronous loop, max_staleness + 1 for the pipelined one."""
    return trainer.max_staleness + 1 if trainer.mode == "pipelined" else 2


class WeightsPublisher:
    """Learner rank 0's side: the shared files (or private buffers), the broadcast group, the layout."""

    def __init__(self, slots: int = 2):
        remove_stale_files()
        self.prefix = os.path.join(SHM_DIR, f"rlreason-weights-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self.paths = [f"{self.prefix}-{i}" for i in range(slots)]
        self.buffers: list[Optional[Tensor]] = [None] * slots  # each slot's bytes: its file mapped, or memory
        self.versions: list[Optional[int]] = [None] * slots  # the version each slot holds
        self.node = node_id()
        self.root = None  # BroadcastRoot, once the driver has formed the group
        self.listener = None  # the socket of the next group's store (``listen``)
        self.lost = False  # the group broke (a reader died): the object store carries versions until it is formed again
        self.note: Optional[str] = None  # why the shared file or the broadcast is not used, said once by the caller
        atexit.register(self.close)

    def publish(self, shapes: dict[str, tuple[torch.dtype, list[int]]], tensors: Iterator[tuple[str, Tensor]],
                       version: int, remote_readers: bool) -> WeightsHandle:
        """Copy the tensors, arriving one by one (ZeRO-3 gathers one module at a time), into ``version``'s
        slot, laid out as ``shapes`` (name -> dtype, shape) says, then broadcast the slot to the group; with
        ``remote_readers`` (or without room in /dev/shm, or a broken group) put a copy in the object store."""
        layout, offset = [], 0
        for name, (dtype, shape) in shapes.items():
            layout.append((name, str(dtype).removeprefix("torch."), list(shape), offset))
            offset += -(-_numel(shape) * torch.empty((), dtype=dtype).element_size() // ALIGN) * ALIGN
        slot = version % len(self.paths)
        path = self.paths[slot] if self._room_for(offset) else None
        buf = self._slot(slot, offset, path) if path or self.root else None
        copies = {} if (remote_readers or path is None or self.lost) else None  # path None: for the file's readers
        where = {name: (getattr(torch, dtype), shape, off) for name, dtype, shape, off in layout}
        for name, t in tensors:
            if buf is not None:
                dtype, shape, off = where[name]
                _view(buf, dtype, shape, off).copy_(t.detach().reshape(shape))
            if copies is not None:
                copies[name] = t.detach().to("cpu", copy=True)
        self.versions[slot] = version if buf is not None else None
        sent = self.root is not None and self.root.send(version, buf)
        if self.root is not None and not sent:
            self.note = f"{self.root.broken}: Ray's object store carries the weights until the group is formed again"
            self.root, self.lost = None, True
            copies = copies or {name: v.clone() for name, v in views(buf, layout).items()}  # a view pickles its whole buffer
        ref = None
        if copies is not None:
            import ray

            ref = ray.put(copies)
        return WeightsHandle(version, self.node, path, layout, ref, broadcast=sent)

    def listen(self) -> str:
        """Open the store's socket of the next broadcast group; returns its host:port for the readers."""
        from rlreason.workers.broadcast import address, listen

        self.listener = listen()
        return address(self.listener)

    def join(self, size: int) -> None:
        """Root a new broadcast group of ``size`` members where ``listen`` said (blocks until all have
        joined), then send every version still held, oldest first: a restarted reader may need them."""
        from rlreason.workers.broadcast import BroadcastRoot

        if self.root is not None:
            self.root.close()
        self.root, self.lost = BroadcastRoot(self.listener, size), False
        held = sorted((v, s) for s, v in enumerate(self.versions) if v is not None)
        for version, slot in held:
            self.root.send(version, self.buffers[slot])

    def _slot(self, slot: int, nbytes: int, path: Optional[str]) -> Tensor:
        """The bytes of ``slot``: its shared file ``path``, or memory of this process (to broadcast from)."""
        if self.buffers[slot] is None or self.buffers[slot].numel() != max(nbytes, 1):
            self.buffers[slot] = (torch.from_file(path, shared=True, size=max(nbytes, 1), dtype=torch.uint8) if path
                                  else torch.empty(max(nbytes, 1), dtype=torch.uint8))
        return self.buffers[slot]

    def _room_for(self, nbytes: int) -> bool:
        """Every slot's file fits in /dev/shm with room to spare (a full tmpfs kills the writer with SIGBUS;
        containers often give it 64 MB)."""
        if any(os.path.exists(p) for p in self.paths):
            return True  # already sized by an earlier version
        try:
            st = os.statvfs(SHM_DIR)
        except OSError:
            self.note = f"{SHM_DIR} is not available: the weight sync goes through Ray's object store"
            return False
        if st.f_bavail * st.f_frsize < len(self.paths) * nbytes + 256 * 2**20:
            self.note = (f"{SHM_DIR} has {st.f_bavail * st.f_frsize / 2**20:.0f} MB free, too little for {len(self.paths)} copies "
                         f"of the weights ({nbytes / 2**20:.0f} MB each): the weight sync goes through Ray's "
                         "object store (a bigger /dev/shm, e.g. docker --shm-size, makes it faster)")
            return False
        return True

    def close(self) -> None:
        if self.root is not None:
            self.root.close()
            self.root = None
        for path in self.paths:
            try:
                os.remove(path)
            except OSError:
                pass


class PolicySource:
    """The learner's side of the weight sync (a mixin of LearnerWorker: ``engine``, ``rank``, ``cfg``,
    ``publisher``): every rank gathers (ZeRO-3), rank 0 publishes and roots the broadcast group."""

    def policy_weights(self) -> Optional[dict[str, Tensor]]:
        """Full policy weights on CPU from rank 0 (every rank must call: ZeRO-3 gathers)."""
        state = self._cpu_state()
        return state if self.rank == 0 else None

    def publish_weights(self, version: int, remote_readers: bool) -> Optional[WeightsHandle]:
        """Publish the policy for the rollout workers (rlreason.workers.weights); rank 0 returns the
        handle. Every rank must call (ZeRO-3 gathers)."""
        module = self.engine.module
        shapes = {name: (t.dtype, list(getattr(t, "ds_shape", t.shape)))  # ZeRO-3: the full shape of a shard
                  for name, t in module.state_dict(keep_vars=True).items()}
        tensors = self._state_pairs()
        if self.rank != 0:
            for _ in tensors:  # the other ranks take part in every ZeRO-3 gather
                pass
            return None
        handle = self._publisher().publish(shapes, tensors, version, remote_readers)
        if self.publisher.note:
            print(f"rlreason learner: {self.publisher.note}", flush=True)
            self.publisher.note = None
        return handle

    def _publisher(self) -> WeightsPublisher:
        if self.publisher is None:  # pipelined: loads queue behind up to max_staleness generations
            self.publisher = WeightsPublisher(slots=slots_for(self.cfg.trainer))
        return self.publisher

    def broadcast_address(self) -> str:
        """Where rank 0 serves the next weight broadcast group's store (rlreason.workers.broadcast)."""
        return self._publisher().listen()

    def join_broadcast(self, size: int) -> None:
        """Rank 0 roots a new weight broadcast group with the rollout workers that cannot map its files."""
        self._publisher().join(size)

    def node(self) -> str:
        return node_id()

    def _state_pairs(self):
        """(name, full tensor) pairs of the policy's state dict (ZeRO-3: one module gathered at a time,
        so every rank must iterate them all)."""
        module = self.engine.module
        return zero3_tensors(module) if self.cfg.learner.zero_stage == 3 else iter(module.state_dict().items())

    def _cpu_state(self) -> dict[str, Tensor]:
        """The policy's full state dict on CPU, on every rank."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self._state_pairs()}


def read(handle: WeightsHandle, receiver=None) -> dict[str, Tensor]:
    """The state dict of ``handle`` on this node, as views of the received broadcast (``receiver``, a
    BroadcastReader) or of the shared file, or the object's tensors."""
    if handle.broadcast and receiver is not None:
        buf = receiver.buffer(handle.version)
        if buf is not None:
            return views(buf, handle.layout)
    if handle.path is not None and handle.node_id == node_id() and os.path.exists(handle.path):
        size = os.path.getsize(handle.path)
        return views(torch.from_file(handle.path, shared=False, size=size, dtype=torch.uint8), handle.layout)
    if handle.ref is None:
        why = (f"its broadcast group ended ({receiver.error})" if receiver is not None and receiver.error else
               "the learner published no copy for other nodes")
        raise RuntimeError(f"weights version {handle.version}: this rollout worker is not on learner rank 0's node "
                           f"and {why}")
    import ray

    return ray.get(handle.ref)


def views(buf: Tensor, layout: list) -> dict[str, Tensor]:
    """The state dict laid out in ``buf`` (uint8), as views."""
    return {name: _view(buf, getattr(torch, dtype), shape, off) for name, dtype, shape, off in layout}


def _numel(shape) -> int:
    count = 1
    for s in shape:
        count *= s
    return count


def _view(buf: Tensor, dtype: torch.dtype, shape, offset: int) -> Tensor:
    count = _numel(shape)
    nbytes = count * torch.empty((), dtype=dtype).element_size()
    return buf[offset:offset + nbytes].view(dtype).view(*shape) if count else torch.empty(shape, dtype=dtype)


def zero3_tensors(module: torch.nn.Module) -> Iterator[tuple[str, Tensor]]:
    """(state-dict name, full tensor) pairs of a ZeRO-3 module, gathering one submodule's parameters at a
    time (every rank must iterate it to the end: each gather is collective). Tied parameters come under
    each of their names; buffers are not partitioned."""
    import deepspeed

    names: dict[int, list[str]] = {}
    for name, t in module.state_dict(keep_vars=True).items():
        names.setdefault(id(t), []).append(name)
    for sub in module.modules():
        params = list(sub.parameters(recurse=False))
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            for p in params:
                for name in names.pop(id(p), []):
                    yield name, p.data
        for b in sub.buffers(recurse=False):
            for name in names.pop(id(b), []):
                yield name, b


def remove_files(handle: Optional[WeightsHandle]) -> None:
    """Remove every slot's file of the publisher that made ``handle`` (the driver, when the run ends:
    Ray may kill the learner before its exit hook runs)."""
    if handle is None or handle.path is None:
        return
    for path in glob.glob(handle.path.rsplit("-", 1)[0] + "-*"):
        try:
            os.remove(path)
        except OSError:
            pass


def remove_stale_files() -> None:
    """Weight files left by learners that no longer run (a killed run) hold memory until removed."""
    for path in glob.glob(os.path.join(SHM_DIR, "rlreason-weights-*")):
        pid = os.path.basename(path).split("-")[2]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            try:
                os.remove(path)
            except OSError:
                pass
