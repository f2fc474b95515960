"""The benchmark end to end: domains → ground-truth gains → every method's scores → metrics → results.

Command line (see :func:`register_cli`)::

    python -m fishersketch_core benchmark --store data/demo.duckdb --out data/results
    python -m fishersketch_core benchmark --quick --store /tmp/s.duckdb --cache /tmp/cache --out /tmp/res
    python -m fishersketch_core benchmark --stage gains          # only the (checkpointed) ground truth
    python -m fishersketch_core benchmark --calibrate            # the recipe grid on calibration domains

Uses the domains that are ready: cached (all three splits) *and* signed in the store; a run over a
partial cache says how many that is. Expensive stages checkpoint into ``--work`` (outside the repository)
and resume when run again with the same settings.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from .groundtruth import DomainCache, Recipe, adapt_head, compute_gains, gain_matrix, head_weight, mean_nll, \
    needed_pairs, subsample_index

__all__ = ["BenchConfig", "DEFAULT_CALIBRATION", "run_benchmark", "run_calibration", "register_cli"]

#: domains the recipe was tuned on; excluded from every evaluation (as targets and as candidates)
DEFAULT_CALIBRATION = ("wordnet-adj.all", "smiles-aryl-halide", "man-da", "code-tcl", "fortune-songs-poems",
                       "protein-lyase", "dna-ecoli")
QUICK_RECIPE = Recipe(steps=2, adapt_positions=128, eval_positions=64, chunk=128)


def default_work() -> Path:
    base = os.environ.get("FISHERSKETCH_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "fishersketch") / "bench"


@dataclasses.dataclass
class BenchConfig:
    """Everything a benchmark run depends on (written to ``recipe.json``)."""

    store: str | None = "data/demo.duckdb"
    cache: str | None = None
    out: str = "data/results"
    report: str | None = "docs/RESULTS.md"
    work: str | None = None
    model: str = "smollm2"
    head: str | None = None
    model_hash: str | None = None
    pool_size: int = 24
    pool_seed: int = 0
    calibration: tuple[str, ...] = DEFAULT_CALIBRATION
    recipe: Recipe = dataclasses.field(default_factory=Recipe)
    exact_positions: int = 128
    baseline_positions: int = 1024
    cka_positions: int = 512
    vocab_chunk: int = 1024
    verbalizer: bool = True
    verbalizer_pool: int = 5
    n_boot: int = 2000
    seed: int = 0
    quick: bool = False
    max_domains: int | None = None
    stage: str = "all"
    threads: int | None = None
    command: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["recipe"] = self.recipe.to_dict()
        d["calibration"] = list(self.calibration)
        return d


def _log_to_stderr(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _domain_groups() -> pd.Series:
    try:
        from ..data import list_domains

        man = list_domains()
        return pd.Series(man["group"].astype(str).to_numpy(), index=man["domain"].astype(str).to_numpy())
    except Exception:
        return pd.Series(dtype=object)


def _load_head(cfg: BenchConfig, log: Callable[[str], Any]) -> tuple[torch.Tensor, str, str]:
    """(W, model_id, model_hash) from ``--head`` or the model."""
    if cfg.head:
        W = head_weight(cfg.head)
        return W, Path(cfg.head).name, cfg.model_hash or ""
    from ..models import load_model

    lm = load_model(cfg.model, device="cpu", with_tokenizer=False)
    log(f"model: {lm.describe()} (loaded in {lm.load_seconds:.1f} s)")
    W = head_weight(lm)
    mid, mh = lm.model_id, lm.model_hash
    del lm
    return W, mid, mh


# --- domain selection -------------------------------------------------------------------------------------------

def select_domains(cfg: BenchConfig, log: Callable[[str], Any]) -> dict[str, Any]:
    """The domains ready for the benchmark (cached and signed), the calibration ones excluded."""
    from .baselines import load_store_signatures

    sigs, meta = {}, pd.DataFrame()
    if cfg.store:
        sigs, meta = load_store_signatures(cfg.store, model_hash=cfg.model_hash)
        if meta.empty:
            raise ValueError(f"the store {cfg.store} holds no signatures"
                             + (f" of model {cfg.model_hash}" if cfg.model_hash else ""))
        combos = meta.groupby(["model_hash", "method", "m", "seed"]).size().sort_values(ascending=False)
        mh, method, m, seed = combos.index[0]
        keep = (meta["model_hash"] == mh) & (meta["method"] == method) & (meta["m"] == m) & (meta["seed"] == seed)
        if (~keep).any():
            log(f"store: using the {int(keep.sum())} signatures of {mh[:19]} / {method} / m={m} / seed={seed} "
                f"({int((~keep).sum())} others ignored)")
        meta = meta[keep]
        sigs = {n: sigs[n] for n in meta["name"]}
        model_hash = str(mh)
    elif cfg.model_hash:
        model_hash = cfg.model_hash
    else:
        raise ValueError("give --store (the probe signatures) or --model-hash")
    if cfg.model_hash and cfg.model_hash != model_hash:
        raise ValueError(f"--model-hash {cfg.model_hash} does not match the store's signatures ({model_hash})")
    from ..domains import default_cache

    cache = DomainCache(cfg.cache or default_cache(), model_hash)
    cached = cache.available()
    manifest = _domain_groups()
    ready = sorted(set(cached) & set(sigs)) if sigs else cached
    calib = [d for d in cfg.calibration if d in ready]
    domains = [d for d in ready if d not in set(cfg.calibration)]
    if cfg.quick and len(domains) < 2:
        domains, calib = ready, []
    if cfg.max_domains:
        domains = domains[: cfg.max_domains]
    log(f"domains: {len(manifest)} in the manifest, {len(cached)} cached with all splits "
        f"({cache.root}), {len(sigs)} signed in the store, {len(ready)} ready; "
        f"{len(calib)} calibration domains excluded → {len(domains)} evaluated")
    if len(domains) < 2:
        raise ValueError(f"only {len(domains)} domain(s) are ready (cached and signed); the benchmark needs at least 2")
    groups = pd.Series({d: str(manifest.get(d, "")) for d in ready}, dtype=object)
    return {"domains": domains, "calibration": calib, "cache": cache, "signatures": sigs, "store_meta": meta,
            "model_hash": model_hash, "groups": groups, "n_manifest": len(manifest), "n_cached": len(cached),
            "n_signed": len(sigs)}


# --- stages ---------------------------------------------------------------------------------------------------------

def run_gains(cfg: BenchConfig, sel: dict[str, Any], W: torch.Tensor, pools: dict[str, list[str]],
              log: Callable[[str], Any]) -> pd.DataFrame:
    """The checkpointed ground-truth job over the pool pairs and self-gains."""
    r = cfg.recipe
    cache = sel["cache"]

    def adapt(name: str):
        z = cache.load(name, "adapt", r.adapt_positions, r.subsample_seed)
        return z["h"], z["targets"]

    def evaluate(name: str):
        z = cache.load(name, "eval", r.eval_positions, r.subsample_seed)
        return z["h"], z["targets"]

    work = Path(cfg.work or default_work())
    work.mkdir(parents=True, exist_ok=True)
    ck = work / f"gains-{sel['model_hash'].replace('sha256:', '')[:12]}-{r.key()}.csv"
    needed = needed_pairs(pools, self_gain=True)
    log(f"ground truth: {sum(map(len, needed.values()))} pairs ({len(needed)} sources); recipe {r.key()}; "
        f"checkpoint {ck}")
    return compute_gains(W, adapt, evaluate, needed, r, checkpoint=ck, log=log, positions_dir=positions_dir(cfg, sel))


def positions_dir(cfg: BenchConfig, sel: dict[str, Any]) -> Path:
    """Where the per-position evaluation NLLs of the ground truth go (for its noise estimate)."""
    return Path(cfg.work or default_work()) / f"positions-{sel['model_hash'].replace('sha256:', '')[:12]}-{cfg.recipe.key()}"


def run_methods(cfg: BenchConfig, sel: dict[str, Any], W: torch.Tensor, log: Callable[[str], Any]
                ) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Every method's (tasks × tasks) scores on the probe splits, and the exact-vs-sketch extras."""
    from ..sketch import Sketcher
    from .baselines import (TaskProbe, activation_scores, cka_scores, error_statistics, exact_from_grams,
                            random_scores, sketch_scores, subsample_signatures, unigram_scores)

    import hashlib

    names = sel["domains"]
    cache = sel["cache"]
    work = Path(cfg.work or default_work())
    work.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    for t in names:
        if t in sel["signatures"]:
            digest.update(sel["signatures"][t].joint_half.tobytes())
    key = json.dumps({"model": sel["model_hash"], "names": names, "exact": cfg.exact_positions,
                      "baseline": cfg.baseline_positions, "cka": cfg.cka_positions, "seed": cfg.seed,
                      "signatures": digest.hexdigest(), "head": float(W.double().sum())}, sort_keys=True)
    saved = work / f"methods-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pkl"
    if saved.exists():  # every score matrix of these inputs was computed before (our own file)
        scores, extras = pd.read_pickle(saved)
        log(f"methods: {len(scores)} score matrices reused from {saved}")
        return scores, extras
    timings: dict[str, float] = {}
    t0 = time.time()
    full = {}
    for t in names:
        z = cache.load(t, "probe")
        full[t] = TaskProbe(z["h"], z["targets"], z["sequence_ids"])
    base = {t: full[t].take(subsample_index(len(full[t]), cfg.baseline_positions, t, "probe-baseline", cfg.seed))
            for t in names}
    exact_idx = {t: subsample_index(len(base[t]), cfg.exact_positions, t, "probe-exact", cfg.seed) for t in names}
    scores: dict[str, pd.DataFrame] = {}
    if sel["signatures"]:
        scores.update(sketch_scores(sel["signatures"], names))
    scores.update(activation_scores(full, names))
    scores["cka"] = cka_scores(base, names, positions=cfg.cka_positions, seed=cfg.seed)
    scores["unigram"] = unigram_scores(full, names, W.shape[0])
    scores["random"] = random_scores(names, seed=cfg.seed)
    timings["cheap_methods_s"] = time.time() - t0
    ck = work / f"vocab-pass-{sel['model_hash'].replace('sha256:', '')[:12]}.npz"
    stats = error_statistics(W, base, names, exact_index=exact_idx, vocab_chunk=cfg.vocab_chunk, checkpoint=ck,
                             log=log)
    timings["vocabulary_pass_s"] = stats["seconds"]
    from .baselines import _cosine_from_gram, _frame

    scores["mean_gradient"] = _frame(_cosine_from_gram(stats["gram_mean_gradient"]), names)
    scores["diag_fisher"] = _frame(_cosine_from_gram(stats["gram_diag_fisher"]), names)
    ex = exact_from_grams(base, names, exact_idx, stats["gram_error"], stats["exact_offsets"])
    scores["exact_rho_F"] = ex["exact_rho_F"]
    extras: dict[str, Any] = {"exact": ex, "timings": timings,
                              "positions": {t: {"probe": len(full[t]), "baseline": len(base[t]),
                                                "exact": len(exact_idx[t])} for t in names}}
    if sel["signatures"]:
        t1 = time.time()
        meta = next(iter(sel["signatures"].values())).meta
        sk = Sketcher(meta.d, meta.K, m=meta.m, seed=meta.seed, method=meta.method)
        sub = subsample_signatures(W, base, names, exact_idx, sk, model_hash=sel["model_hash"])
        extras["subsample_sketch"] = sketch_scores(sub, names)
        extras["sketch_meta"] = {"m": meta.m, "seed": meta.seed, "method": meta.method}
        timings["subsample_sketch_s"] = time.time() - t1
    log(f"methods: {len(scores)} score matrices over {len(names)} domains "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())})")
    pd.to_pickle((scores, extras), saved)
    return scores, extras


def run_verbalizer(cfg: BenchConfig, log: Callable[[str], Any]) -> dict[str, Any]:
    """The verbalizer-shift family on the model: signatures, ground truth, methods, per-target metrics."""
    from ..models import load_model
    from ..audit import random_pools as seeded_pools
    from .baselines import (TaskProbe, _cosine_from_gram, _frame, activation_scores, cka_scores, error_statistics,
                            exact_from_grams, random_scores, sketch_scores, unigram_scores)
    from .metrics import evaluate_methods
    from .verbalizer import VOCABULARIES, prepare_family, task_targets

    t0 = time.time()
    lm = load_model(cfg.model, device="cpu")
    work = Path(cfg.work or default_work()) / "verbalizer"
    prep = prepare_family(lm, work, log=log)
    W = head_weight(lm)
    del lm
    names = prep["tasks"]
    sp = prep["splits"]
    probes = {v: TaskProbe(sp["probe"]["h"], task_targets(prep, v, "probe"), sp["probe"]["sequence_ids"])
              for v in names}
    r = cfg.recipe
    idx_a = subsample_index(len(sp["adapt"]["label"]), r.adapt_positions, "verbalizer", "adapt", r.subsample_seed)
    idx_e = subsample_index(len(sp["eval"]["label"]), r.eval_positions, "verbalizer", "eval", r.subsample_seed)
    pools_all = {t: [s for s in names if s != t] for t in names}
    needed = needed_pairs(pools_all)
    import hashlib

    vkey = hashlib.sha256(json.dumps([prep["token_ids"], prep["n_prompts"]], sort_keys=True).encode()).hexdigest()[:8]
    ck = work / f"gains-{r.key()}-{vkey}.csv"  # keyed by the recipe and the tasks' answer tokens
    gains = compute_gains(W, lambda v: (sp["adapt"]["h"][idx_a], task_targets(prep, v, "adapt")[idx_a]),
                          lambda v: (sp["eval"]["h"][idx_e], task_targets(prep, v, "eval")[idx_e]),
                          needed, r, checkpoint=ck, log=log)
    scores = sketch_scores(prep["signatures"], names)
    scores.update(activation_scores(probes, names))
    scores["cka"] = cka_scores(probes, names, positions=len(sp["probe"]["label"]), seed=cfg.seed)
    scores["unigram"] = unigram_scores(probes, names, W.shape[0])
    scores["random"] = random_scores(names, seed=cfg.seed)
    all_idx = {v: np.arange(len(probes[v])) for v in names}
    stats = error_statistics(W, probes, names, exact_index=all_idx, vocab_chunk=cfg.vocab_chunk, log=log)
    scores["mean_gradient"] = _frame(_cosine_from_gram(stats["gram_mean_gradient"]), names)
    scores["diag_fisher"] = _frame(_cosine_from_gram(stats["gram_diag_fisher"]), names)
    scores["exact_rho_F"] = exact_from_grams(probes, names, all_idx, stats["gram_error"],
                                             stats["exact_offsets"])["exact_rho_F"]
    gm = gain_matrix(gains, names)
    groups = pd.Series({v: "verbalizer" for v in names}, dtype=object)
    per_target = evaluate_methods(scores, gm, pools_all, groups)
    pools5 = seeded_pools(names, min(cfg.verbalizer_pool, len(names) - 1), cfg.pool_seed)
    per_target5 = evaluate_methods(scores, gm, pools5, groups)
    # the activation half-means of the signatures: identical across tasks when h is
    act = np.stack([prep["signatures"][v].activation_half for v in names])
    return {"tasks": names, "gains": gains, "scores": scores, "per_target": per_target, "per_target_pool5": per_target5,
            "pools5": pools5, "n_positions": {s: int(len(v["label"])) for s, v in sp.items()},
            "adapt_positions": int(len(idx_a)), "eval_positions": int(len(idx_e)),
            "activation_sketch_max_abs_diff": float(np.abs(act - act[:1]).max()),
            "seconds": time.time() - t0, "vocabularies": {v: dict(VOCABULARIES[v]) for v in names},
            "family_seconds": prep["seconds"]}


def run_calibration(cfg: BenchConfig, lrs: Sequence[float] = (0.01, 0.05, 0.25), max_steps: int = 10,
                    report_steps: Sequence[int] = (1, 2, 3, 5, 8, 10), log: Callable[[str], Any] = _log_to_stderr
                    ) -> pd.DataFrame:
    """Self-gain (and gains between calibration domains) against step count and initial step size.

    One Armijo-GD run of ``max_steps`` steps per (calibration domain, lr0); the gains on every calibration
    domain's evaluation split are recorded after each of ``report_steps``. Written to
    ``<out>/calibration.csv``.
    """
    from ..domains import default_cache
    from .baselines import load_store_signatures

    W, _, mh = _load_head(cfg, log)
    if not mh and cfg.store:
        _, meta = load_store_signatures(cfg.store)
        mh = str(meta["model_hash"].iloc[0])
    cache = DomainCache(cfg.cache or default_cache(), mh)
    calib = [d for d in cfg.calibration if d in cache.available()]
    if not calib:
        raise ValueError(f"none of the calibration domains {list(cfg.calibration)} is cached yet")
    log(f"calibration on {len(calib)} domains: {', '.join(calib)}")
    r = cfg.recipe
    ev = {t: cache.load(t, "eval", r.eval_positions, r.subsample_seed) for t in calib}
    before = {t: mean_nll(W, ev[t]["h"], ev[t]["targets"], r.chunk) for t in calib}
    rows: list[dict[str, Any]] = []
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    for lr in lrs:
        for s in calib:
            a = cache.load(s, "adapt", r.adapt_positions, r.subsample_seed)
            t0 = time.time()

            def on_step(step: int, Wc: torch.Tensor, info: dict[str, Any]) -> None:
                if step not in report_steps:
                    return
                for t in calib:
                    g = before[t] - mean_nll(Wc, ev[t]["h"], ev[t]["targets"], r.chunk)
                    rows.append({"lr0": lr, "steps": step, "source": s, "target": t, "gain": g,
                                 "adapt_loss": info["adapt_loss_after"], "lr_now": info["final_lr"]})

            adapt_head(W, a["h"], a["targets"], dataclasses.replace(r, steps=max_steps, lr0=lr), on_step=on_step)
            mine = [x for x in rows if x["source"] == s and x["target"] == s and x["lr0"] == lr]
            log(f"calibration lr0={lr:g} {s}: self-gain by steps "
                + ", ".join(f"{x['steps']}:{x['gain']:+.3f}" for x in mine) + f" ({time.time() - t0:.0f} s)")
            pd.DataFrame(rows).to_csv(out / "calibration.csv", index=False)
    return pd.DataFrame(rows)


# --- the whole thing ------------------------------------------------------------------------------------------------

def run_benchmark(cfg: BenchConfig, log: Callable[[str], Any] = _log_to_stderr) -> dict[str, Any]:
    """Run the stages named by ``cfg.stage`` ("all", "gains" = only the ground truth, "verbalizer" = only the verbalizer family)."""
    from ..audit import random_pools as seeded_pools
    from .metrics import evaluate_methods, exact_vs_sketch, summary_table
    from .report import write_outputs

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.stage == "verbalizer":  # only the verbalizer family (its files are reused by a later full run)
        verb = run_verbalizer(cfg, log)
        from .metrics import summary_table

        s = summary_table(verb["per_target"], n_boot=cfg.n_boot, seed=cfg.seed)
        return {"verbalizer": verb, "summary": s}
    t_all = time.time()
    timings: dict[str, float] = {}
    sel = select_domains(cfg, log)
    names = sel["domains"]
    pool_size = min(cfg.pool_size, len(names) - 1)
    pools = seeded_pools(names, pool_size, cfg.pool_seed)
    t0 = time.time()
    W, model_id, model_hash = _load_head(cfg, log)
    if sel["signatures"]:
        meta = next(iter(sel["signatures"].values())).meta
        if (meta.K, meta.d) != tuple(W.shape):
            raise ValueError(f"the head is {tuple(W.shape)} but the signatures have K={meta.K}, d={meta.d}")
        model_id = meta.model_id or model_id
    timings["load_head_s"] = time.time() - t0
    t0 = time.time()
    gains = run_gains(cfg, sel, W, pools, log)
    timings["ground_truth_s"] = float(gains["seconds"].groupby(gains["source"]).max().sum()) if len(gains) else 0.0
    timings["ground_truth_wall_s"] = time.time() - t0
    if cfg.stage == "gains":
        return {"gains": gains}
    calib_self = None
    if sel["calibration"] and not cfg.quick:
        calib_pools = {c: [] for c in sel["calibration"]}
        calib_self = run_gains(cfg, sel, W, calib_pools, log)
    t0 = time.time()
    scores, extras = run_methods(cfg, sel, W, log)
    timings["methods_wall_s"] = time.time() - t0
    timings.update(extras["timings"])
    gm = gain_matrix(gains, names)
    per_target = evaluate_methods(scores, gm, pools, sel["groups"])
    summary = summary_table(per_target, n_boot=cfg.n_boot, seed=cfg.seed)
    evs = {}
    if "fishersketch" in scores:
        evs["store sketch (all probe positions) vs exact U (subsample)"] = exact_vs_sketch(
            scores["fishersketch"], scores["exact_rho_F"], pools)
    if "subsample_sketch" in extras:
        evs["sketch vs exact, same subsample (split form)"] = exact_vs_sketch(
            extras["subsample_sketch"]["fishersketch"], extras["exact"]["exact_rho_F_split"], pools)
        evs["sketch vs exact, same subsample (U form)"] = exact_vs_sketch(
            extras["subsample_sketch"]["fishersketch"], extras["exact"]["exact_rho_F"], pools)
    from .groundtruth import load_positions
    from .metrics import ground_truth_noise

    before, after = load_positions(positions_dir(cfg, sel), names)
    gt_noise = ground_truth_noise(before, after, pools, scores={m: scores[m] for m in scores},
                                  n_boot=200 if not cfg.quick else 50, seed=cfg.seed)
    verb = None
    if cfg.verbalizer and not cfg.quick and cfg.stage in ("all", "verbalizer"):
        t0 = time.time()
        verb = run_verbalizer(cfg, log)
        timings["verbalizer_s"] = time.time() - t0
    timings["total_s"] = time.time() - t_all
    res = {"config": cfg, "selection": sel, "pools": pools, "gains": gains, "calibration_self": calib_self,
           "scores": scores, "extras": extras, "per_target": per_target, "summary": summary,
           "exact_vs_sketch": evs, "verbalizer": verb, "gt_noise": gt_noise, "timings": timings, "model_id": model_id,
           "model_hash": sel["model_hash"]}
    write_outputs(res, log)
    return res


# --- CLI --------------------------------------------------------------------------------------------------------------

def register_cli(subparsers: Any) -> None:
    p = subparsers.add_parser("benchmark", help="source-selection benchmark: ground truth, baselines, results",
                              description=__doc__.split("Command line")[0].strip(),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a small, fast run (few positions; no verbalizer family); "
                                                        "used by the tests")
    p.add_argument("--store", default="data/demo.duckdb", help="DuckDB store with the domains' probe signatures")
    p.add_argument("--cache", default=None, help="activation cache (default: the domains command's default)")
    p.add_argument("--out", default="data/results", help="results folder (gains.parquet, choices.parquet, ...)")
    p.add_argument("--report", default=None, help="markdown report (default docs/RESULTS.md; <out>/RESULTS.md "
                                                  "with --quick)")
    p.add_argument("--work", default=None, help=f"checkpoints and caches of the benchmark (default {default_work()})")
    p.add_argument("--model", default="smollm2", help="model whose head is adapted (default SmolLM2-135M-Instruct)")
    p.add_argument("--head", default=None, help="a .npy (K, d) head instead of loading the model (tests, synthetic)")
    p.add_argument("--model-hash", default=None, help="weights hash of the cache/store to use (default: the store's)")
    p.add_argument("--stage", default="all", choices=["all", "gains", "verbalizer"],
                   help="'gains': only the checkpointed ground-truth job; 'verbalizer': only the verbalizer family")
    p.add_argument("--calibrate", action="store_true", help="run the recipe grid on the calibration domains")
    p.add_argument("--calibration", default=",".join(DEFAULT_CALIBRATION),
                   help="comma-separated calibration domains (excluded from evaluation)")
    p.add_argument("--pool-size", type=int, default=24)
    p.add_argument("--pool-seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="adaptation steps (recipe)")
    p.add_argument("--lr", type=float, default=None, help="initial step size (recipe)")
    p.add_argument("--adapt-positions", type=int, default=None)
    p.add_argument("--eval-positions", type=int, default=None)
    p.add_argument("--exact-positions", type=int, default=None, help="probe positions per domain for exact ρ_F")
    p.add_argument("--baseline-positions", type=int, default=None,
                   help="probe positions per domain for the gradient baselines")
    p.add_argument("--max-domains", type=int, default=None, help="evaluate only the first N ready domains")
    p.add_argument("--no-verbalizer", action="store_true", help="skip the verbalizer-shift family")
    p.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples (default 2000)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=_cli)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    quick = bool(args.quick)
    recipe = QUICK_RECIPE if quick else Recipe()
    changes = {k: v for k, v in (("steps", args.steps), ("lr0", args.lr), ("adapt_positions", args.adapt_positions),
                                 ("eval_positions", args.eval_positions)) if v is not None}
    recipe = dataclasses.replace(recipe, **changes)
    cfg = BenchConfig(store=None if (args.store or "").lower() == "none" else args.store, cache=args.cache,
                      out=args.out, work=args.work, model=args.model, head=args.head, model_hash=args.model_hash,
                      pool_size=args.pool_size, pool_seed=args.pool_seed,
                      calibration=tuple(c for c in args.calibration.split(",") if c), recipe=recipe,
                      verbalizer=not args.no_verbalizer, quick=quick, max_domains=args.max_domains,
                      stage=args.stage, threads=args.threads,
                      command="python -m fishersketch_core " + " ".join(sys.argv[1:]))
    if quick:
        cfg.exact_positions, cfg.baseline_positions, cfg.cka_positions, cfg.vocab_chunk = 32, 96, 48, 8192
        cfg.n_boot = 200
        cfg.verbalizer = False
        cfg.max_domains = cfg.max_domains or 8
    if args.exact_positions:
        cfg.exact_positions = args.exact_positions
    if args.baseline_positions:
        cfg.baseline_positions = args.baseline_positions
    if args.bootstrap:
        cfg.n_boot = args.bootstrap
    cfg.report = args.report or (str(Path(cfg.out) / "RESULTS.md") if quick else "docs/RESULTS.md")
    return cfg


def _cli(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.calibrate:
        run_calibration(cfg)
        return 0
    t0 = time.time()
    res = run_benchmark(cfg)
    if "summary" in res:
        s = res["summary"]
        s = s[s["target_group"] == "(all)"]
        for r in s.itertuples():
            print(f"{r.method:16s} top-1 {100 * r.top1:5.1f}%  oracle share {100 * r.oracle_share:5.1f}%  "
                  f"Spearman {r.spearman:+.2f}")
    if cfg.stage == "all":
        print(f"benchmark finished in {time.time() - t0:.0f} s; results in {cfg.out}, report {cfg.report}")
    else:
        print(f"stage {cfg.stage} finished in {time.time() - t0:.0f} s (checkpoints in {cfg.work or default_work()})")
    return 0
