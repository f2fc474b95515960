"""Sharded signatures under ``torchrun``: each rank sketches its shard, the states are all-reduced.

Streaming states are sums, so the shards of a task merge exactly (up to float64 summation order).
Under ``torchrun`` (or any launcher that sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``)
:func:`compute_signature_distributed` initialises ``torch.distributed`` (gloo on CPU, nccl on GPU),
sketches sequences ``shard_sequences(seqs, rank, world)``, sums the state vectors and counters with
one ``all_reduce``, and returns the same signature on every rank; by convention rank 0 writes it.

Example
-------
Launch two CPU processes on this machine::

    python -m torch.distributed.run --nproc_per_node 2 -m fishersketch_core compute \\
        --model smollm2 --data corpus.txt --name demo --out demo.npz
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import torch

from .compute import ComputeResult, compute_state, finish, resolve_sketcher, shard_sequences
from .sketch import Sketcher, SketchState


def env_world() -> tuple[int, int] | None:
    """``(rank, world_size)`` from the launcher's environment, or None outside a launcher."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None


def is_distributed() -> bool:
    """True when running under a launcher with more than one process (or a group is initialised)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size() > 1
    w = env_world()
    return w is not None and w[1] > 1


def init_distributed(device: str | torch.device | None = None, backend: str | None = None) -> tuple[int, int]:
    """Initialise the default process group from the environment (once) and return ``(rank, world)``.

    ``backend`` defaults to ``"nccl"`` when ``device`` is CUDA and to ``"gloo"`` otherwise. On CUDA each
    rank uses ``cuda:LOCAL_RANK``.
    """
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; run in one process instead")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if env_world() is None:
        raise RuntimeError("no RANK/WORLD_SIZE in the environment: launch with "
                           "`python -m torch.distributed.run --nproc_per_node N ...` (torchrun)")
    dev = torch.device(device) if device not in (None, "auto") else None
    cuda = (dev is not None and dev.type == "cuda") or (dev is None and torch.cuda.is_available())
    backend = backend or ("nccl" if cuda else "gloo")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend={backend!r} is not supported; use 'gloo' (CPU) or 'nccl' (GPU)")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def local_device(device: str | torch.device | None = None) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` on GPU machines (unless ``device`` says otherwise)."""
    if device not in (None, "auto"):
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


@contextlib.contextmanager
def rank_zero_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. converting the model into the cache), then the others."""
    import torch.distributed as dist

    active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if active and dist.get_rank() != 0:
        dist.barrier()
    yield
    if active and dist.get_rank() == 0:
        dist.barrier()


def all_reduce_state(state: SketchState, counters: dict[str, float] | None = None) -> dict[str, float]:
    """Sum ``state`` (in place) and the numeric ``counters`` over all ranks with one all_reduce.

    Returns the summed counters. Uses the state's float64 vector form (``as_vector``/``load_vector``).
    """
    import torch.distributed as dist

    keys = sorted(counters or {})
    vec = torch.cat([state.as_vector().to(torch.float64),
                     torch.tensor([float(counters[k]) for k in keys], dtype=torch.float64)])  # (6m + 3 + c,)
    if dist.get_backend() == "nccl":
        vec = vec.cuda()
    dist.all_reduce(vec, op=dist.ReduceOp.SUM)
    vec = vec.cpu()
    n_state = vec.numel() - len(keys)
    state.load_vector(vec[:n_state])
    return {k: float(v) for k, v in zip(keys, vec[n_state:].tolist())}


def compute_signature_distributed(model: Any, task: Any, sketcher: Sketcher | None = None, *, m: int = 4096,
                                  seed: int = 0, method: str = "fast", checkpoint: str | os.PathLike | None = None,
                                  **kwargs: Any) -> ComputeResult:
    """Sketch this rank's shard of ``task`` and all-reduce: every rank gets the full signature.

    Outside a multi-process launcher this is :func:`fishersketch_core.compute.compute_signature`.
    ``checkpoint`` gets a per-rank suffix (``<path>.rank<r>-of-<w>``), so each rank resumes its shard.
    Other keyword arguments are those of ``compute_signature`` (progress, cancel, batch sizes ...).
    """
    from .compute import compute_signature

    if not is_distributed():
        return compute_signature(model, task, sketcher, m=m, seed=seed, method=method, checkpoint=checkpoint,
                                 **kwargs)
    rank, world = init_distributed(getattr(model, "device", None))
    sk = resolve_sketcher(model, sketcher, m, seed, method)
    if isinstance(task, (list, tuple)):
        seqs, name, ttype = list(task), "", ""
    else:
        seqs = task.encode(getattr(model, "tokenizer", None))
        name, ttype = task.name, getattr(task, "task_type", "")
    if not seqs:
        raise ValueError(f"task {name!r} has no scored positions; check the data and max_positions")
    mine = shard_sequences(seqs, rank, world)
    ckpt = None if checkpoint is None else f"{os.fspath(checkpoint)}.rank{rank}-of-{world}"
    state, c = compute_state(model, mine, sk, checkpoint=ckpt, **kwargs)
    summed = all_reduce_state(state, {"positions": c["positions"], "tokens": c["tokens"], "nll_sum": c["nll_sum"],
                                      "seconds": c["seconds"]})
    c = c | summed | {"seconds": c["seconds"]}
    return finish(model, state, c, name=name, task_type=ttype, make_signature=True)
