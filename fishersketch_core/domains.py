"""The bundled domains through a real model: signatures into a store, head inputs into a cache.

One forward pass per domain split does two jobs: the probe split's positions are sketched into the
domain's signature (which goes to a DuckDB store), and every split's head inputs h, target tokens,
sequence ids and per-position NLL are cached on disk (float16 h) so that the ground-truth transfer
benchmark (head-only adaptation) never runs the transformer again.

Everything is written as it goes (one file per domain split, one store row per domain), so a stopped
job loses at most the domain split in flight; running the same command again resumes.

Command line::

    python -m fishersketch_core domains --store data/demo.duckdb --cache ~/.cache/fishersketch/activations
    python -m fishersketch_core domains --model gemma3 --store data/demo.duckdb --splits probe --limit 24
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from .sketch import Sketcher

SPLITS = ("probe", "adapt", "eval")


def default_cache() -> Path:
    return Path(os.environ.get("FISHERSKETCH_CACHE", Path.home() / ".cache" / "fishersketch")) / "activations"


def model_slug(model_hash: str) -> str:
    """Short, filesystem-safe key of a model's weights (the cache is per model)."""
    return model_hash.replace("sha256:", "")[:16]


def cache_path(cache: Path, model_hash: str, domain: str, split: str) -> Path:
    return Path(cache) / model_slug(model_hash) / domain / f"{split}.npz"


def load_cached(cache: Path, model_hash: str, domain: str, split: str) -> dict[str, np.ndarray]:
    """Cached arrays of one domain split: h (n, d) float16, targets (n,), sequence_ids (n,), nll (n,)."""
    path = cache_path(cache, model_hash, domain, split)
    if not path.exists():
        raise FileNotFoundError(f"no cached activations for {domain}/{split} at {path}; run "
                                "`python -m fishersketch_core domains --cache ...` first")
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def process_domain(lm: Any, domain: str, *, splits: Sequence[str] = SPLITS, sketcher: Sketcher | None = None,
                   cache: Path | None = None, max_positions: dict[str, int] | None = None,
                   progress: Callable[[str], Any] | None = None) -> Any:
    """Forward one domain's splits; return the probe signature (or None when probe isn't asked).

    Cached splits already on disk are skipped (when the probe split is cached, its signature is
    rebuilt from the cache: the head's logits are recomputed from the cached h — identical up to the
    float16 rounding of h).
    """
    from .data import load_domain
    from .extract import iter_chunks
    from .tasks import CorpusTask

    docs = load_domain(domain)
    state = sketcher.new_state() if (sketcher is not None and "probe" in splits) else None
    for split in splits:
        path = cache_path(cache, lm.model_hash, domain, split) if cache is not None else None
        if path is not None and path.exists() and (split != "probe" or state is None):
            continue
        budget = (max_positions or {}).get(split)
        seqs = CorpusTask(f"{domain}/{split}", docs[split], max_positions=budget).encode(lm.tokenizer)
        hs, ys, ids, nlls = [], [], [], []
        t0 = time.time()
        for chunk in iter_chunks(lm, seqs):
            if path is not None:
                hs.append(chunk.h.to(torch.float16).cpu())
                ys.append(chunk.targets.cpu())
                ids.append(chunk.sequence_ids.cpu())
            for h, e, seq_ids, nll in chunk.iter_errors():
                if split == "probe" and state is not None:
                    state.update(h, e, sequence_ids=seq_ids)
                nlls.append(nll.float().cpu())
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp.npz")
            np.savez(tmp, h=torch.cat(hs).numpy(), targets=torch.cat(ys).numpy(),
                     sequence_ids=torch.cat(ids).numpy(), nll=torch.cat(nlls).numpy())
            tmp.replace(path)
        if progress:
            n = sum(len(x) for x in nlls)
            progress(f"{domain}/{split}: {n} positions in {time.time() - t0:.1f} s "
                     f"(mean NLL {float(torch.cat(nlls).mean()):.3f})")
    if state is None:
        return None
    mean_nll = None
    if cache is not None:
        probe = cache_path(cache, lm.model_hash, domain, "probe")
        if probe.exists():
            with np.load(probe) as npz:
                mean_nll = float(npz["nll"].mean())
    return state.signature(task_name=domain, model_id=lm.model_id, model_hash=lm.model_hash,
                           task_type="corpus", split="probe", mean_nll=mean_nll)


def run(model: str | None, store_path: str | None, *, cache: Path | None, splits: Sequence[str],
        domains: Iterable[str] | None = None, limit: int | None = None, m: int = 4096, seed: int = 0,
        method: str = "fast", name_prefix: str = "", max_positions: dict[str, int] | None = None,
        log: Callable[[str], Any] = print) -> int:
    """Process the bundled domains; returns the number of domains newly written to the store."""
    from .data import list_domains
    from .models import load_model

    manifest = list_domains()
    wanted = list(domains) if domains else list(manifest["domain"])
    unknown = sorted(set(wanted) - set(manifest["domain"]))
    if unknown:
        raise ValueError(f"unknown domains {unknown}; see data/manifest.csv for the list")
    if limit:
        # a balanced subset: round-robin over groups so every group is represented
        by_group: dict[str, list[str]] = {}
        for dom in wanted:
            by_group.setdefault(str(manifest.set_index("domain").loc[dom, "group"]), []).append(dom)
        order = [d for i in range(max(map(len, by_group.values()))) for g in sorted(by_group)
                 for d in by_group[g][i:i + 1]]
        wanted = order[:limit]
    lm = load_model(model) if model else load_model()
    log(f"model: {lm.describe()} (loaded in {lm.load_seconds:.1f} s)")
    sketcher = Sketcher(lm.d, lm.K, m=m, seed=seed, method=method) if store_path else None
    store = None
    if store_path:
        from .store import SignatureStore
        Path(store_path).parent.mkdir(parents=True, exist_ok=True)
        store = SignatureStore(store_path)
    written = 0
    info = manifest.set_index("domain")
    try:
        for i, dom in enumerate(wanted, 1):
            name = f"{name_prefix}{dom}"
            have = store is not None and not store.list(name=name, model=lm.model_hash, m=m, seed=seed,
                                                          method=method).empty
            need_sig = store is not None and "probe" in splits and not have
            todo = [s for s in splits if (s == "probe" and need_sig)
                    or (cache is not None and not cache_path(cache, lm.model_hash, dom, s).exists())]
            if not todo:
                continue
            log(f"[{i}/{len(wanted)}] {dom}: {', '.join(todo)}")
            sig = process_domain(lm, dom, splits=todo, sketcher=sketcher if need_sig else None,
                                 cache=cache, max_positions=max_positions, progress=log)
            if sig is not None and store is not None:
                row = info.loc[dom]
                store.add(sig, name=name, domain=dom, group=str(row["group"]), task_type="corpus",
                          corpus_source=f"{row['source_package']} {row['source_version']}",
                          corpus_licence=str(row["licence"]), tags={"split": "probe", "model": lm.model_id},
                          on_conflict="replace")
                written += 1
    finally:
        if store is not None:
            store.close()
    return written


def register_cli(subparsers: Any) -> None:
    p = subparsers.add_parser("domains", help="sketch the bundled domains into a store and cache head inputs",
                              description=__doc__.split("Command line::")[0])
    p.add_argument("--model", default=None, help="model alias or path (default: SmolLM2-135M-Instruct)")
    p.add_argument("--store", default=None, help="DuckDB store for the probe signatures")
    p.add_argument("--cache", default=None, help=f"activation cache folder (default {default_cache()}); "
                                                 "'none' to skip caching")
    p.add_argument("--splits", default="probe,adapt,eval", help="comma-separated splits to run")
    p.add_argument("--domain", action="append", help="only this domain (repeatable)")
    p.add_argument("--limit", type=int, default=None, help="a balanced subset of this many domains")
    p.add_argument("--features", "--m", dest="m", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", default="fast", choices=["fast", "dense"])
    p.add_argument("--name-prefix", default="", help="prefix for task names in the store")
    p.add_argument("--max-positions", default=None,
                   help="per-split position budgets, e.g. 'adapt=2048,eval=1024' (default: all)")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    bad = sorted(set(splits) - set(SPLITS))
    if bad:
        raise ValueError(f"unknown splits {bad}; choose from {SPLITS}")
    cache = None if (args.cache or "").lower() == "none" else Path(args.cache) if args.cache else default_cache()
    budgets = None
    if args.max_positions:
        budgets = {k: int(v) for k, v in (kv.split("=") for kv in args.max_positions.split(","))}
    t0 = time.time()
    n = run(args.model, args.store, cache=cache, splits=splits, domains=args.domain, limit=args.limit,
            m=args.m, seed=args.seed, method=args.method, name_prefix=args.name_prefix, max_positions=budgets,
            log=lambda s: print(s, flush=True, file=sys.stderr))
    print(f"{n} signatures written in {time.time() - t0:.0f} s", flush=True)
    return 0
