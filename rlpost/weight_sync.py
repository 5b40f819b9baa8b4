"""Moving policy weights from the learner to the rollout engines.

Two transports exist:

* object store: the learner's rank 0 hands a ``{name: tensor}`` dict to Ray, and every rollout
  actor loads it (``RolloutWorker.update_weights``). Simple, works anywhere, one copy per actor.
* collective: the learner's rank 0 and the rollout engines form a small process group of their
  own and rank 0 broadcasts the weights (gloo on CPU, NCCL on GPU). This module holds that side:
  the group, the wire format, and the sender. The receiver lives in ``rlpost.rollout``.

The group never touches the default ``torch.distributed`` world: the learner already has its own
DeepSpeed world and in-process vLLM initialises another one, so both ends build a private group
from a ``TCPStore``.

Usage (the driver; every call of one round must be in flight at the same time)::

    port = free_port()
    refs = [w.init_weight_group.remote(addr, port, i + 1, n + 1) for i, w in enumerate(workers)]
    group = create_weight_group(addr, port, 0, n + 1)      # on the learner's rank 0
    specs = weight_specs(state)                             # once: names, shapes, dtypes never change
    ray.get(refs)
    ...
    refs = [w.receive_weights.remote(specs) for w in workers]
    broadcast_weights(group, state, specs)                  # every sync, on the learner's rank 0
    ray.get(refs)
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping
from datetime import timedelta

import torch

WeightSpec = tuple[str, tuple[int, ...], str]

# Tensors are packed into flat byte buckets so one broadcast carries many small tensors (gloo's
# per-call cost dominates for the tiny LayerNorm vectors). Offsets are aligned so every tensor can
# be viewed in place with its own dtype on the receiving side.
DEFAULT_BUCKET_BYTES = 256 * 1024 * 1024
_ALIGN = 64


def free_port(host: str = "") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def to_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype name {name!r}")
    return dtype


def weight_specs(named_tensors: Mapping[str, torch.Tensor]) -> list[WeightSpec]:
    """(name, shape, dtype name) of each tensor, in the order they will be broadcast.

    Send this to the receivers first: they allocate buffers from it.
    """
    return [(name, tuple(t.shape), dtype_name(t.dtype)) for name, t in named_tensors.items()]


class WeightGroup:
    """A private broadcast group: rank 0 is the sender (the learner), the others receive."""

    def __init__(self, rank: int, world_size: int, backend: str, device: torch.device, comm, store):
        self.rank = rank
        self.world_size = world_size
        self.backend = backend
        self.device = device
        self._comm = comm
        # The store must outlive the group: rank 0 hosts it and the others keep a connection.
        self._store = store

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None:
        """In-place broadcast of `tensor` (on `self.device`) from `src` to every rank."""
        if self.backend == "gloo":
            opts = torch.distributed.BroadcastOptions()
            opts.rootRank = src
            opts.rootTensor = 0
            self._comm.broadcast([tensor], opts).wait()
        else:
            self._comm.broadcast(tensor, src=src, stream=torch.cuda.current_stream())
            torch.cuda.current_stream().synchronize()

    def close(self) -> None:
        self._comm = None
        self._store = None

    def __repr__(self) -> str:
        return f"WeightGroup(rank={self.rank}, world_size={self.world_size}, backend={self.backend!r})"


def create_weight_group(
    master_addr: str,
    master_port: int,
    rank: int,
    world_size: int,
    backend: str = "gloo",
    timeout_s: float = 300,
) -> WeightGroup:
    """Join the private weight-broadcast group; blocks until all `world_size` ranks have joined.

    Rank 0 hosts the rendezvous store on `master_addr:master_port`, so it must be the learner
    process that will call `broadcast_weights`. All ranks must call this concurrently.
    """
    if backend == "gloo":
        timeout = timedelta(seconds=timeout_s)
        store = torch.distributed.TCPStore(master_addr, master_port, world_size, is_master=(rank == 0), timeout=timeout)
        # A prefix keeps this group's keys apart if the store is ever shared.
        prefixed = torch.distributed.PrefixStore("rlpost_weights", store)
        comm = torch.distributed.ProcessGroupGloo(prefixed, rank, world_size, timeout)
        return WeightGroup(rank, world_size, "gloo", torch.device("cpu"), comm, store)
    if backend == "nccl":
        # vLLM's stateless group + its NCCL wrapper: no global torch.distributed state touched.
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        pg = StatelessProcessGroup.create(
            host=master_addr,
            port=master_port,
            rank=rank,
            world_size=world_size,
            store_timeout=int(timeout_s),
        )
        device = torch.device("cuda", torch.cuda.current_device())
        comm = PyNcclCommunicator(pg, device=device)
        return WeightGroup(rank, world_size, "nccl", device, comm, pg)
    raise ValueError(f"unknown weight-sync backend {backend!r} (expected 'gloo' or 'nccl')")


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    numel = 1
    for d in shape:
        numel *= d
    return numel * dtype.itemsize


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def plan_buckets(specs: list[WeightSpec], bucket_bytes: int = DEFAULT_BUCKET_BYTES):
    """Split `specs` into consecutive buckets of (spec, byte offset) with the bucket's size.

    Both sides compute the same plan from the same specs, so only the raw bytes travel.
    """
    buckets: list[tuple[list[tuple[WeightSpec, int]], int]] = []
    current: list[tuple[WeightSpec, int]] = []
    size = 0
    for spec in specs:
        name, shape, dt = spec
        n = _aligned(_nbytes(tuple(shape), to_dtype(dt)))
        if current and size + n > bucket_bytes:
            buckets.append((current, size))
            current, size = [], 0
        current.append(((name, tuple(shape), dt), size))
        size += n
    if current:
        buckets.append((current, size))
    return buckets


def broadcast_weights(
    group: WeightGroup,
    named_tensors: Mapping[str, torch.Tensor],
    specs: list[WeightSpec] | None = None,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
) -> list[WeightSpec]:
    """Send `named_tensors` from rank 0 to every other rank of `group`; returns the specs sent.

    The receivers must be inside `receive_broadcast` with the same specs (see `weight_specs`).
    `specs`, the ones the receivers were given, are checked against `named_tensors` first: a
    mismatch fails here instead of filling the receivers' buffers with the wrong bytes.
    Tensors travel in their own dtype: cast them first to halve the bytes if the engine is bf16.
    """
    if group.rank != 0:
        raise RuntimeError("broadcast_weights is for rank 0 (the learner); other ranks receive")
    sent = weight_specs(named_tensors)
    if specs is not None and [(n, tuple(shape), dt) for n, shape, dt in specs] != sent:
        raise ValueError("the weights to broadcast do not match the specs the receivers were given")
    specs = sent
    for entries, size in plan_buckets(specs, bucket_bytes):
        buf = torch.empty(size, dtype=torch.uint8, device=group.device)
        for (name, _, _), offset in entries:
            t = named_tensors[name].detach()
            flat = t.to(group.device).contiguous().reshape(-1).view(torch.uint8)
            buf[offset : offset + flat.numel()].copy_(flat)
        group.broadcast(buf, src=0)
    return specs


def receive_broadcast(
    group: WeightGroup,
    specs: list[WeightSpec],
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Receive what rank 0's `broadcast_weights` sends; yields (name, tensor) bucket by bucket.

    The tensors are views into the bucket buffer: copy them if they must outlive the iteration.
    """
    for entries, size in plan_buckets(specs, bucket_bytes):
        buf = torch.empty(size, dtype=torch.uint8, device=group.device)
        group.broadcast(buf, src=0)
        for (name, shape, dt), offset in entries:
            dtype = to_dtype(dt)
            n = _nbytes(shape, dtype)
            yield name, buf[offset : offset + n].view(dtype).view(shape)
