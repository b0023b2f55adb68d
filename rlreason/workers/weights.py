"""The weight sync without the driver: the learner publishes, rollout workers read, the driver only
passes a small handle between them.

- **Same node: a shared-memory file.** Learner rank 0 copies every tensor once into a file in
  ``/dev/shm`` (its layout in the handle); a rollout worker on that node maps the file and loads its
  model straight from the mapped tensors. Versions rotate over ``slots`` files, so a worker that has
  not yet loaded version v never sees a later one written over it (2 slots for the synchronous loop,
  max_staleness + 1 for the pipelined one, where loads queue behind generations).
- **Another node: Ray's object store, put by the learner.** The state dict goes from rank 0's node to
  the reader's directly; the driver holds only the reference.

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


def node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


class WeightsPublisher:
    """Learner rank 0's side: the two shared files and the layout of the state dict."""

    def __init__(self, slots: int = 2):
        remove_stale_files()
        self.prefix = os.path.join(SHM_DIR, f"rlreason-weights-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self.paths = [f"{self.prefix}-{i}" for i in range(slots)]
        self.node = node_id()
        self.note: Optional[str] = None  # why the shared file is not used, said once by the caller
        atexit.register(self.close)

    def publish(self, shapes: dict[str, tuple[torch.dtype, list[int]]], tensors: Iterator[tuple[str, Tensor]],
                       version: int, remote_readers: bool) -> WeightsHandle:
        """Copy the tensors, arriving one by one (ZeRO-3 gathers one module at a time), into the file of
        ``version``'s slot, laid out as ``shapes`` (name -> dtype, shape) says; with ``remote_readers``
        (or without room in /dev/shm) into the object store instead or as well, for other nodes."""
        layout, offset = [], 0
        for name, (dtype, shape) in shapes.items():
            layout.append((name, str(dtype).removeprefix("torch."), list(shape), offset))
            offset += -(-_numel(shape) * torch.empty((), dtype=dtype).element_size() // ALIGN) * ALIGN
        path = self.paths[version % len(self.paths)] if self._room_for(offset) else None
        buf = torch.from_file(path, shared=True, size=max(offset, 1), dtype=torch.uint8) if path else None
        where = {name: (getattr(torch, dtype), shape, off) for name, dtype, shape, off in layout}
        copies = {} if (remote_readers or path is None) else None
        for name, t in tensors:
            if buf is not None:
                dtype, shape, off = where[name]
                _view(buf, dtype, shape, off).copy_(t.detach().reshape(shape))
            if copies is not None:
                copies[name] = t.detach().to("cpu", copy=True)
        ref = None
        if copies is not None:
            import ray

            ref = ray.put(copies)
        return WeightsHandle(version, self.node, path, layout, ref)

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
        for path in self.paths:
            try:
                os.remove(path)
            except OSError:
                pass


def read(handle: WeightsHandle) -> dict[str, Tensor]:
    """The state dict of ``handle`` on this node: views of the shared file, or the object's tensors."""
    if handle.path is not None and handle.node_id == node_id() and os.path.exists(handle.path):
        size = os.path.getsize(handle.path)
        buf = torch.from_file(handle.path, shared=False, size=size, dtype=torch.uint8)
        return {name: _view(buf, getattr(torch, dtype), shape, off) for name, dtype, shape, off in handle.layout}
    if handle.ref is None:
        raise RuntimeError(f"weights version {handle.version}: this rollout worker is not on learner rank 0's node "
                           f"and the learner published no copy for other nodes")
    import ray

    return ray.get(handle.ref)


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
