"""Moving policy weights from the learner to the rollout engines.

Both transports send the weights in the engines' dtype (`engine_dtype`: bf16 halves the bytes)
and in buckets, planned once from the weights' names and shapes (`weight_specs`,
`plan_buckets`):

* object store: the learner's rank 0 puts each bucket into Ray's object store itself
  (`put_buckets`) and returns only the object refs; the driver hands those refs to every rollout
  actor, which reads the buckets one by one while loading them (`fetch_buckets`, zero-copy from
  its node's shared memory). The bytes never pass through the driver.
* collective: the learner's rank 0 and the rollout engines form a small process group of their
  own and rank 0 broadcasts the buckets (gloo on CPU, NCCL on GPU). This module holds that side:
  the group, the wire format, and the sender. The receiver lives in ``rlpost.distributed.rollout``.

The group never touches the default ``torch.distributed`` world: the learner already has its own
DeepSpeed world and in-process vLLM initialises another one, so both ends build a private group
from a ``TCPStore``.

A broadcast blocks inside the actors until every rank has taken part, so the driver bounds each
sync with `wait_for_sync`: past the timeout it raises `WeightSyncTimeout` naming the actors that
did not answer.

Usage of the collective (the driver; every call of one round must be in flight at the same time)::

    port = free_port()
    refs = [w.init_weight_group.remote(addr, port, i + 1, n + 1) for i, w in enumerate(workers)]
    group = create_weight_group(addr, port, 0, n + 1)      # on the learner's rank 0
    specs = weight_specs(state, dtype)                      # once: names, shapes, dtypes never change
    ray.get(refs)
    ...
    refs = [w.receive_weights.remote(specs) for w in workers]
    broadcast_weights(group, state, specs)                  # every sync, on the learner's rank 0
    ray.get(refs)
"""

from __future__ import annotations

import socket
import time
import warnings
from collections.abc import Iterator, Mapping
from datetime import timedelta

import torch

from rlpost.model import bf16_is_native

WeightSpec = tuple[str, tuple[int, ...], str]

# Tensors are packed into flat byte buckets so one broadcast carries many small tensors (gloo's
# per-call cost dominates for the tiny LayerNorm vectors). Offsets are aligned so every tensor can
# be viewed in place with its own dtype on the receiving side.
DEFAULT_BUCKET_BYTES = 256 * 1024 * 1024
_ALIGN = 64


class WeightSyncTimeout(RuntimeError):
    """A weight sync (or the set-up of its broadcast group) did not finish within sync.timeout_s."""


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


def engine_dtype(dtype: str, bf16_native: bool | None = None) -> str:
    """The dtype a rollout engine configured with `dtype` (vllm.dtype) runs in: bfloat16 falls back
    to float32 where the device has no bf16 arithmetic, as `RolloutWorker` does. `bf16_native`
    defaults to this process's device (`rlpost.model.bf16_is_native`)."""
    if dtype != "bfloat16":
        return dtype
    if bf16_native is None:
        bf16_native = bf16_is_native()
    return "bfloat16" if bf16_native else "float32"


def weight_specs(named_tensors: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> list[WeightSpec]:
    """(name, shape, dtype name) of each tensor to send, in order: in `dtype` (the engines') if
    given, else in the tensor's own dtype.

    A tensor that is the very same memory as an earlier one is left out: tied input and output
    embeddings travel once (the engine ties them itself), a fifth of SmolLM2-135M's bytes.
    Send the specs to the receivers first: they allocate buffers from them.
    """
    specs, seen = [], set()
    for name, t in named_tensors.items():
        # Meta tensors (and empty ones) all have address 0: never merged.
        key = (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)
        if t.data_ptr() and key in seen:
            continue
        seen.add(key)
        specs.append((name, tuple(t.shape), dtype_name(dtype or t.dtype)))
    return specs


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


def _check_specs(named_tensors: Mapping[str, torch.Tensor], specs: list[WeightSpec]) -> list[WeightSpec]:
    """`specs` as tuples, after checking that `named_tensors` has those names and shapes: a
    mismatch fails at the sender instead of filling the receivers' buffers with the wrong bytes."""
    specs = [(name, tuple(shape), dt) for name, shape, dt in specs]
    if [(n, s) for n, s, _ in weight_specs(named_tensors)] != [(n, s) for n, s, _ in specs]:
        raise ValueError("the weights to send do not match the specs the receivers were given")
    return specs


def put_buckets(named_tensors: Mapping[str, torch.Tensor], buckets) -> list:
    """Put `named_tensors` into Ray's object store, one object per bucket of `plan_buckets`, each
    tensor in its spec's dtype; returns the objects' refs, for `fetch_buckets`.

    Tensors travel as their raw bytes (numpy arrays, which Ray stores without pickling and reads
    back without copying): a CPU tensor already in its spec's dtype is copied once, straight into
    shared memory. The owner of the objects is the caller: they live as long as a ref to them.
    """
    import ray

    _check_specs(named_tensors, [spec for entries, _ in buckets for spec, _ in entries])
    refs = []
    for entries, _ in buckets:
        bucket = []
        for (name, shape, dt), _ in entries:
            t = named_tensors[name].detach().to("cpu", to_dtype(dt)).contiguous()
            bucket.append(((name, shape, dt), t.reshape(-1).view(torch.uint8).numpy()))
        refs.append(ray.put(bucket))
    return refs


def fetch_buckets(refs: list) -> Iterator[tuple[str, torch.Tensor]]:
    """The (name, tensor) pairs of the buckets behind `refs` (`put_buckets`), each bucket read
    from the object store only when the previous one is consumed.

    The tensors are read-only views of the object store's memory: copy them, never write to them.
    """
    import ray

    for ref in refs:
        for (name, shape, dt), data in ray.get(ref):
            with warnings.catch_warnings():
                # Shared memory is mapped read-only; the engine only ever copies from these views.
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                raw = torch.from_numpy(data)
            yield name, raw.view(to_dtype(dt)).view(tuple(shape))


def broadcast_weights(
    group: WeightGroup,
    named_tensors: Mapping[str, torch.Tensor],
    specs: list[WeightSpec] | None = None,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
) -> list[WeightSpec]:
    """Send `named_tensors` from rank 0 to every other rank of `group`, bucket by bucket; returns
    the specs sent.

    The receivers must be inside `receive_broadcast` with the same specs. With `specs` (the ones
    the receivers were given, see `weight_specs`), names and shapes are checked first and each
    tensor is cast to its spec's dtype as it is packed; without, tensors travel in their own dtype.
    """
    if group.rank != 0:
        raise RuntimeError("broadcast_weights is for rank 0 (the learner); other ranks receive")
    specs = weight_specs(named_tensors) if specs is None else _check_specs(named_tensors, specs)
    buckets = plan_buckets(specs, bucket_bytes)
    # One buffer for every bucket: each broadcast has completed when `broadcast` returns.
    buf = torch.empty(max((size for _, size in buckets), default=0), dtype=torch.uint8, device=group.device)
    for entries, size in buckets:
        for (name, shape, dt), offset in entries:
            dtype = to_dtype(dt)
            view = buf[offset : offset + _nbytes(shape, dtype)].view(dtype).view(shape)
            view.copy_(named_tensors[name].detach())  # casts and moves in one pass
        group.broadcast(buf[:size], src=0)
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


def wait_for_sync(calls: Mapping[str, list], backend: str, timeout_s: float, start: float | None = None) -> dict:
    """Results of one sync's remote calls, given per role ({"rollout worker": [ref of worker 0,
    ...], ...}) and returned the same way.

    An actor's error is raised as soon as it arrives: the others may wait in a broadcast that will
    never complete. When the calls have not all answered `timeout_s` seconds after `start` (a
    `time.perf_counter()`, default now), raises WeightSyncTimeout naming the ones that did not.
    """
    import ray

    deadline = (time.perf_counter() if start is None else start) + timeout_s
    names = {ref: f"{role} {i}" for role, refs in calls.items() for i, ref in enumerate(refs)}
    results, pending = {}, list(names)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.perf_counter()))
        if not ready:
            raise WeightSyncTimeout(
                f"weight sync ({backend}) did not finish within {timeout_s:g} s: no answer from "
                f"{', '.join(names[ref] for ref in pending)}. Raise sync.timeout_s if a sync can take longer "
                "(a larger model, a slower link, a busier machine). Actors blocked in a gloo/NCCL broadcast "
                "cannot be interrupted: they stay stuck until the run's actors are stopped (RLActors.shutdown)."
            )
        for ref in ready:
            results[ref] = ray.get(ref)
    return {role: [results[ref] for ref in refs] for role, refs in calls.items()}
