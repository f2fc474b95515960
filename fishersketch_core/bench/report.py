"""Result files and the markdown report of a benchmark run.

Files written to ``<out>`` (all small, meant to be committed):

* ``gains.parquet`` — long ground truth, one row per computed (source, target) pair of evaluated domains:
  ``source, target, gain, loss_before, loss_after, source_group, target_group, in_pool, is_self``
  (gain = drop in mean NLL, nats; the app's audit page reads ``source, target, gain``).
* ``choices.parquet`` — one row per (target, method): ``target, target_group, method, method_label, chosen,
  chosen_group, n_tied, best, best_group, gain_chosen, gain_best, gain_min, top1, pct_oracle,
  normalised_gain, regret, spearman, n_candidates``.
* ``metrics.csv`` — per method and target group: mean and 95 % bootstrap interval of every metric.
* ``pools.json`` — the candidate pool of every target; ``recipe.json`` — recipe, settings, domains,
  counts, timings, versions; ``exact_vs_sketch.csv``; ``calibration_self_gains.csv``;
  ``verbalizer_gains.parquet``, ``verbalizer_choices.parquet``, ``verbalizer_metrics.csv``.

A hand-written block between ``<!-- notes:start -->`` and ``<!-- notes:end -->`` in an existing report is
kept when the report is regenerated.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import platform
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .baselines import METHOD_LABELS
from .metrics import METRICS, paired_difference, summary_table

__all__ = ["write_outputs", "render_report"]

ORDER = ["fishersketch", "exact_rho_F", "rho_h", "rho_h_centred", "cka", "rho_e", "kronecker", "mean_gradient",
         "diag_fisher", "unigram", "random", "rho_h_sketch"]
NOTES_START, NOTES_END = "<!-- notes:start -->", "<!-- notes:end -->"


def _ordered(methods) -> list[str]:
    methods = list(dict.fromkeys(methods))
    return [m for m in ORDER if m in methods] + [m for m in methods if m not in ORDER]


def _pct(x: float, digits: int = 1) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{100 * x:.{digits}f}"


def _ci(row: pd.Series, metric: str, pct: bool = True, digits: int = 1) -> str:
    v, lo, hi = row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"]
    if not np.isfinite(v):
        return "—"
    if pct:
        return f"{100 * v:.{digits}f} [{100 * lo:.{digits}f}, {100 * hi:.{digits}f}]"
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _gains_long(res: dict[str, Any]) -> pd.DataFrame:
    names = set(res["selection"]["domains"])
    groups = res["selection"]["groups"]
    g = res["gains"]
    g = g[g["source"].isin(names) & g["target"].isin(names)].copy()
    in_pool = {(s, t) for t, pool in res["pools"].items() for s in pool}
    g["source_group"] = g["source"].map(lambda x: groups.get(x, ""))
    g["target_group"] = g["target"].map(lambda x: groups.get(x, ""))
    g["in_pool"] = [(s, t) in in_pool for s, t in zip(g["source"], g["target"])]
    g["is_self"] = g["source"] == g["target"]
    cols = ["source", "target", "gain", "loss_before", "loss_after", "source_group", "target_group", "in_pool",
            "is_self"]
    return g[cols].sort_values(["target", "source"]).reset_index(drop=True)


def _choices(per_target: pd.DataFrame) -> pd.DataFrame:
    df = per_target.copy()
    df["method_label"] = df["method"].map(lambda m: METHOD_LABELS.get(m, m))
    cols = ["target", "target_group", "method", "method_label", "chosen", "chosen_group", "n_tied", "best",
            "best_group", "gain_chosen", "gain_best", "gain_min", *METRICS, "n_candidates"]
    return df[cols]


def _self_gain_stats(res: dict[str, Any]) -> dict[str, Any]:
    frames = [res["gains"]]
    if res.get("calibration_self") is not None:
        frames.append(res["calibration_self"])
    g = pd.concat(frames).drop_duplicates(["source", "target"])
    selfg = g[g["source"] == g["target"]]
    keep = set(res["selection"]["domains"]) | set(res["selection"]["calibration"])
    selfg = selfg[selfg["source"].isin(keep)]
    n = len(selfg)
    pos = int((selfg["gain"] > 0).sum())
    return {"n": n, "positive": pos, "rate": pos / n if n else math.nan,
            "median": float(selfg["gain"].median()) if n else math.nan,
            "min": float(selfg["gain"].min()) if n else math.nan,
            "negative_domains": selfg.loc[selfg["gain"] <= 0, "source"].tolist(),
            "calibration": {r.source: r.gain for r in selfg.itertuples()
                            if r.source in set(res["selection"]["calibration"])}}


def write_outputs(res: dict[str, Any], log: Callable[[str], Any] = print) -> dict[str, Path]:
    """Write every result file and the report; returns their paths."""
    cfg = res["config"]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    gl = _gains_long(res)
    paths["gains"] = out / "gains.parquet"
    gl.to_parquet(paths["gains"], index=False)
    paths["choices"] = out / "choices.parquet"
    _choices(res["per_target"]).to_parquet(paths["choices"], index=False)
    paths["metrics"] = out / "metrics.csv"
    res["summary"].to_csv(paths["metrics"], index=False, float_format="%.6g")
    paths["pools"] = out / "pools.json"
    paths["pools"].write_text(json.dumps({"pool_size": len(next(iter(res["pools"].values()))),
                                          "pool_seed": cfg.pool_seed, "how": "fishersketch_core.audit.random_pools("
                                          "sorted evaluated domains, pool_size, pool_seed)", "pools": res["pools"]},
                                         indent=1))
    evs = res["exact_vs_sketch"]
    if evs:
        paths["exact_vs_sketch"] = out / "exact_vs_sketch.csv"
        pd.DataFrame([{"comparison": k, **{kk: vv for kk, vv in v.items() if kk != "abs_diff"}}
                      for k, v in evs.items()]).to_csv(paths["exact_vs_sketch"], index=False, float_format="%.6g")
    if res.get("calibration_self") is not None:
        cs = res["calibration_self"]
        cs = cs[(cs["source"] == cs["target"]) & cs["source"].isin(res["selection"]["calibration"])]
        paths["calibration_self"] = out / "calibration_self_gains.csv"
        cs[["source", "gain", "loss_before", "loss_after"]].to_csv(paths["calibration_self"], index=False,
                                                                     float_format="%.6g")
    noise = res.get("gt_noise")
    if noise is not None and len(noise["per_target"]):
        paths["gt_noise"] = out / "gt_noise.csv"
        noise["per_target"].to_csv(paths["gt_noise"], index=False, float_format="%.6g")
    verb = res.get("verbalizer")
    vsum = vsum5 = None
    if verb is not None:
        vg = verb["gains"].copy()
        paths["verbalizer_gains"] = out / "verbalizer_gains.parquet"
        vg[["source", "target", "gain", "loss_before", "loss_after"]].to_parquet(paths["verbalizer_gains"], index=False)
        vch = pd.concat([_choices(verb["per_target"]).assign(pool="all others"),
                         _choices(verb["per_target_pool5"]).assign(pool=f"seeded {cfg.verbalizer_pool}")])
        paths["verbalizer_choices"] = out / "verbalizer_choices.parquet"
        vch.to_parquet(paths["verbalizer_choices"], index=False)
        vsum = summary_table(verb["per_target"], n_boot=cfg.n_boot, seed=cfg.seed)
        vsum5 = summary_table(verb["per_target_pool5"], n_boot=cfg.n_boot, seed=cfg.seed)
        paths["verbalizer_metrics"] = out / "verbalizer_metrics.csv"
        pd.concat([vsum.assign(pool="all others"), vsum5.assign(pool=f"seeded {cfg.verbalizer_pool}")]).to_csv(
            paths["verbalizer_metrics"], index=False, float_format="%.6g")
    selfstats = _self_gain_stats(res)
    sel = res["selection"]
    recipe = {
        "command": cfg.command, "generated": _dt.datetime.now().isoformat(timespec="seconds"),
        "model_id": res["model_id"], "model_hash": res["model_hash"], "recipe": cfg.recipe.to_dict(),
        "recipe_key": cfg.recipe.key(), "recipe_text": cfg.recipe.describe(), "config": cfg.to_dict(),
        "domains_evaluated": sel["domains"], "calibration_domains": sel["calibration"],
        "counts": {"manifest": sel["n_manifest"], "cached": sel["n_cached"], "signed": sel["n_signed"],
                   "evaluated": len(sel["domains"]), "calibration": len(sel["calibration"]),
                   "pairs": int(len(gl))},
        "self_gain": {k: v for k, v in selfstats.items()}, "timings_s": res["timings"],
        "positions": res["extras"].get("positions", {}), "sketch": res["extras"].get("sketch_meta", {}),
        "versions": {"python": platform.python_version(), "torch": __import__("torch").__version__,
                     "platform": platform.platform()},
    }
    if verb is not None:
        recipe["verbalizer"] = {"tasks": verb["tasks"], "vocabularies": verb["vocabularies"],
                                "n_positions": verb["n_positions"], "adapt_positions": verb["adapt_positions"],
                                "eval_positions": verb["eval_positions"], "seconds": verb["seconds"],
                                "activation_sketch_max_abs_diff": verb["activation_sketch_max_abs_diff"],
                                "pools5": verb["pools5"]}
    paths["recipe"] = out / "recipe.json"
    paths["recipe"].write_text(json.dumps(recipe, indent=1, default=str))
    if cfg.report:
        rp = Path(cfg.report)
        rp.parent.mkdir(parents=True, exist_ok=True)
        old = rp.read_text() if rp.exists() else ""
        rp.write_text(render_report(res, gl, selfstats, vsum, vsum5, notes=_notes(old)))
        paths["report"] = rp
    log(f"results: {', '.join(str(p) for p in paths.values())}")
    return paths


def _notes(text: str) -> str | None:
    if NOTES_START in text and NOTES_END in text:
        return text[text.index(NOTES_START): text.index(NOTES_END) + len(NOTES_END)]
    return None


def _main_table(summary: pd.DataFrame, per_target: pd.DataFrame, n_boot: int, seed: int, chance: float) -> list[str]:
    s = summary[summary["target_group"] == "(all)"].set_index("method")
    lines = ["| method | top-1 % [95 % CI] | % of oracle, Σ pick / Σ best [CI] | median per-target % | "
             "normalised gain [CI] | regret (nats) [CI] | Spearman [CI] | Δ top-1 vs FisherSketch [CI] |",
             "|---|---|---|---|---|---|---|---|"]
    for m in _ordered(s.index):
        r = s.loc[m]
        if m != "fishersketch" and "fishersketch" in s.index:
            d, lo, hi, _ = paired_difference(per_target, "fishersketch", m, "top1", n_boot, seed)
            delta = f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
        else:
            delta = ""
        name = f"**{METHOD_LABELS.get(m, m)}**" if m == "fishersketch" else METHOD_LABELS.get(m, m)
        lines.append(f"| {name} | {_ci(r, 'top1')} | {_ci(r, 'oracle_share')} | {_pct(r['pct_oracle_median'])} | "
                     f"{_ci(r, 'normalised_gain', False, 3)} | {_ci(r, 'regret', False, 3)} | "
                     f"{_ci(r, 'spearman', False, 2)} | {delta} |")
    lines.append(f"| chance | {100 * chance:.1f} | | | | | 0 | |")
    return lines


def _group_table(summary: pd.DataFrame, metric: str) -> list[str]:
    g = summary[summary["target_group"] != "(all)"]
    groups = sorted(g["target_group"].unique())
    ns = g.groupby("target_group")["n_targets"].first()
    lines = ["| method | " + " | ".join(f"{x} ({ns[x]})" for x in groups) + " |",
             "|---|" + "---|" * len(groups)]
    for m in _ordered(g["method"].unique()):
        row = g[g["method"] == m].set_index("target_group")
        lines.append(f"| {METHOD_LABELS.get(m, m)} | " + " | ".join(
            _pct(row.loc[x, metric], 0) if x in row.index else "—" for x in groups) + " |")
    return lines


def _discussion(summary: pd.DataFrame, per_target: pd.DataFrame, n_boot: int, seed: int) -> list[str]:
    s = summary[summary["target_group"] == "(all)"].set_index("method")
    if "fishersketch" not in s.index:
        return []
    fs = s.loc["fishersketch"]
    others = [m for m in _ordered(s.index) if m not in ("fishersketch", "rho_h_sketch")]
    best_other = max(others, key=lambda m: s.loc[m, "top1"])
    out = [f"- FisherSketch picks the best of the pool for {_pct(fs['top1'])} % of targets "
           f"(95 % CI {_pct(fs['top1_lo'])}–{_pct(fs['top1_hi'])}); its picks achieve {_pct(fs['oracle_share'])} % "
           f"(CI {_pct(fs['oracle_share_lo'])}–{_pct(fs['oracle_share_hi'])}) of the oracle's total gain."]
    better, worse, tied = [], [], []
    for m in others:
        d, lo, hi, _ = paired_difference(per_target, "fishersketch", m, "top1", n_boot, seed)
        (better if lo > 0 else worse if hi < 0 else tied).append(f"{METHOD_LABELS.get(m, m)} ({100 * d:+.1f})")
    if better:
        out.append("- Top-1 significantly above (paired bootstrap, 95 %): " + "; ".join(better) + ".")
    if tied:
        out.append("- Not distinguishable from FisherSketch on top-1: " + "; ".join(tied) + ".")
    if worse:
        out.append("- Significantly above FisherSketch on top-1: " + "; ".join(worse) + ".")
    out.append(f"- The strongest other method on top-1 is {METHOD_LABELS.get(best_other, best_other)} "
               f"({_pct(s.loc[best_other, 'top1'])} %).")
    g = summary[(summary["target_group"] != "(all)")]
    wins, losses = [], []
    for grp, part in g.groupby("target_group"):
        part = part.set_index("method")
        if "fishersketch" not in part.index:
            continue
        rivals = part.drop(index=[m for m in ("fishersketch", "rho_h_sketch", "exact_rho_F") if m in part.index])
        top_r = rivals["top1"].idxmax()
        if part.loc["fishersketch", "top1"] >= rivals["top1"].max():
            wins.append(f"{grp} ({_pct(part.loc['fishersketch', 'top1'], 0)} %)")
        else:
            losses.append(f"{grp} ({_pct(part.loc['fishersketch', 'top1'], 0)} % vs "
                          f"{METHOD_LABELS.get(top_r, top_r)} {_pct(rivals['top1'].max(), 0)} %)")
    if wins:
        out.append("- Groups where FisherSketch's top-1 is at least every baseline's: " + ", ".join(wins) + ".")
    if losses:
        out.append("- Groups where a baseline beats it: " + ", ".join(losses) + ".")
    return out


def render_report(res: dict[str, Any], gl: pd.DataFrame, selfstats: dict[str, Any], vsum: pd.DataFrame | None,
                  vsum5: pd.DataFrame | None, notes: str | None = None) -> str:
    cfg = res["config"]
    sel = res["selection"]
    r = cfg.recipe
    n_eval = len(sel["domains"])
    pool = len(next(iter(res["pools"].values())))
    tm = res["timings"]
    L: list[str] = []
    L.append("# Results: does FisherSketch pick the right source?")
    L.append("")
    L.append(f"Generated by `{cfg.command or 'python -m fishersketch_core benchmark'}` on "
             f"{_dt.date.today().isoformat()}{' (QUICK MODE: few positions, not a result)' if cfg.quick else ''}. "
             f"Model **{res['model_id']}** (`{res['model_hash'][:19]}…`), signatures from `{cfg.store}`. "
             "Every number below is regenerated by that command; the files it writes are listed at the end.")
    L.append("")
    L.append("## Setup")
    L.append("")
    L.append(f"- **Domains**: {n_eval} evaluated ({sel['n_manifest']} in the manifest, {sel['n_cached']} cached with "
             f"all three splits, {sel['n_signed']} signed in the store); {len(sel['calibration'])} calibration "
             f"domains ({', '.join(sel['calibration']) or 'none'}) were used to choose the recipe and are excluded "
             "from evaluation, as targets and as candidates.")
    L.append(f"- **Pools**: for each target a fixed seeded pool of {pool} candidate sources "
             f"(`audit.random_pools`, seed {cfg.pool_seed}; chance top-1 = 1/{pool} = {100 / pool:.1f} %).")
    L.append(f"- **Ground truth** (DESIGN.md §5): {r.describe()}. g(s→t) = L_t(before) − L_t(after) in nats; only "
             f"the pool pairs and self-gains are computed ({len(gl)} pairs), from cached head inputs "
             "(float16 on disk, float32 in compute), no transformer forward passes.")
    L.append(f"- **Self-gain check**: g(t→t) > 0 for {selfstats['positive']} of {selfstats['n']} domains "
             f"({_pct(selfstats['rate'])} %; requirement ≥ 95 %); median self-gain {selfstats['median']:.3f} nats"
             + (f"; non-positive: {', '.join(selfstats['negative_domains'])}" if selfstats['negative_domains'] else "")
             + ".")
    L.append(f"- **Methods** (same probe splits): FisherSketch and the other sketch quantities from the store's "
             f"signatures (all probe positions, m = {res['extras'].get('sketch_meta', {}).get('m', '?')}, U form); "
             f"exact ρ_F on {cfg.exact_positions} probe positions per domain; mean-gradient and diagonal-Fisher "
             f"cosines on {cfg.baseline_positions}; CKA on {cfg.cka_positions} (rows paired by index); ρ_h, its "
             "centred variant and the unigram similarity on all probe positions.")
    L.append("- **Metrics**: top-1 (pick = best in pool); % of oracle = Σ_t g(pick) / Σ_t g(best) over targets with "
             "g(best) > 0 (the share of the oracle's total gain; the median of the per-target ratios g(pick)/g(best) "
             "beside it — their mean is dominated by targets whose best gain is ≈ 0 and is only in metrics.csv); "
             "normalised gain (g(pick) − g(min))/(g(best) − g(min)), regret g(best) − g(pick), Spearman over the "
             f"pool; means over targets with percentile bootstrap 95 % intervals ({cfg.n_boot} resamples). Tied "
             "scores are broken uniformly at random in expectation.")
    cal_path = Path(cfg.out) / "calibration.csv"
    if cal_path.exists():
        cal = pd.read_csv(cal_path)
        cal = cal[cal["source"] == cal["target"]]
        if len(cal):
            L.append("")
            L.append(f"Recipe calibration (`--calibrate`, on the {cal['source'].nunique()} calibration domains): "
                     "self-gain g(t→t) in nats after k Armijo-GD steps, mean [min] over the domains.")
            L.append("")
            steps = sorted(cal["steps"].unique())
            L.append("| initial step | " + " | ".join(f"{k} steps" for k in steps) + " |")
            L.append("|---|" + "---|" * len(steps))
            for lr, part in cal.groupby("lr0"):
                cells = []
                for k in steps:
                    v = part[part["steps"] == k]["gain"]
                    cells.append(f"{v.mean():.3f} [{v.min():+.3f}]" if len(v) else "—")
                L.append(f"| {lr:g} | " + " | ".join(cells) + " |")
    L.append("")
    L.append(f"## Source selection over {n_eval} domains ({pool} candidates per target)")
    L.append("")
    L += _main_table(res["summary"], res["per_target"], cfg.n_boot, cfg.seed, 1 / pool)
    L.append("")
    L.append("Published anchors (Sweeney 2026, Llama-3 8B-class model, K = 128,256): 45.7 % top-1 and 98.4 % of "
             "oracle over 100 domains with 24 candidates (chance 4.2 %).")
    L.append("")
    L.append("### Top-1 (%) by target group")
    L.append("")
    L += _group_table(res["summary"], "top1")
    L.append("")
    L.append("### % of oracle (Σ pick / Σ best) by target group")
    L.append("")
    L += _group_table(res["summary"], "oracle_share")
    L.append("")
    L.append("### What the numbers say (generated)")
    L.append("")
    L += _discussion(res["summary"], res["per_target"], cfg.n_boot, cfg.seed)
    L.append("")
    noise = res.get("gt_noise")
    if noise is not None and len(noise["per_target"]):
        L.append("### How much of the ground truth is noise")
        L.append("")
        L.append(f"Each target's evaluation positions resampled with replacement ({noise['n_boot']} times, paired "
                 "across the pool's sources), gains recomputed from the stored per-position NLLs: the full-sample "
                 f"best source stays best in **{_pct(noise['stability'])} %** of resamples on average, and for "
                 f"{_pct(noise['separated'])} % of targets the 95 % interval of g(best) − g(second) excludes 0. The "
                 "stability is roughly the top-1 that a predictor of the full-sample best can expect against a "
                 "re-drawn evaluation split; the methods' top-1 against the resampled ground truths:")
        L.append("")
        rt = noise.get("resampled_top1", {})
        L.append("| method | top-1 % against resampled ground truth |")
        L.append("|---|---|")
        for m in _ordered(rt):
            L.append(f"| {METHOD_LABELS.get(m, m)} | {_pct(rt[m])} |")
        L.append(f"| full-sample best (oracle) | {_pct(noise['stability'])} |")
        L.append("")
    evs = res["exact_vs_sketch"]
    if evs:
        L.append("## Sketch against exact ρ_F")
        L.append("")
        L.append("| comparison | pairs | mean abs diff | median | 90th pct | 99th pct | max | same top-1 |")
        L.append("|---|---|---|---|---|---|---|---|")
        for k, v in evs.items():
            L.append(f"| {k} | {v['n_pairs']} | {v['mean']:.4f} | {v['q50']:.4f} | {v['q90']:.4f} | {v['q99']:.4f} | "
                     f"{v['max']:.4f} | {_pct(v['top1_agreement'])} % of {v['n_targets']} |")
        L.append("")
        L.append(f"Pairs are (target, pool source). The first row compares what the tool reports (the store's "
                 f"signature over all probe positions) with the exact U-statistic on a {cfg.exact_positions}-position "
                 "subsample, so it mixes sketching error with subsampling error. The other rows sketch exactly the "
                 "subsample's positions (same m, seed, method) and compare with the exact value on those positions: "
                 "the split form is the quantity the sketch estimates without bias (self-norms over cross-half pairs), "
                 "the U form is the oracle's default.")
        L.append("")
    if vsum is not None:
        verb = res["verbalizer"]
        k = len(verb["tasks"])
        L.append("## Verbalizer shift")
        L.append("")
        L.append(f"{k} prompt→target tasks share the same {verb['n_positions'].get('probe', 0)} probe, "
                 f"{verb['n_positions'].get('adapt', 0)} adaptation and {verb['n_positions'].get('eval', 0)} evaluation "
                 "prompts (WordNet glosses of six noun categories, `Definition: …\\nCategory:`) and differ only in the "
                 "single-token answer word of each category. The head inputs h at the scored positions are therefore "
                 f"identical across tasks (largest difference between the tasks' activation sketches: "
                 f"{verb['activation_sketch_max_abs_diff']:.1e}). Same recipe as above; ground truth adapts on "
                 f"{verb['adapt_positions']} and evaluates on {verb['eval_positions']} positions.")
        L.append("")
        L.append("| task | " + " | ".join(verb["vocabularies"][verb["tasks"][0]].keys()) + " |")
        L.append("|---|" + "---|" * len(verb["vocabularies"][verb["tasks"][0]]))
        for v in verb["tasks"]:
            L.append(f"| {v} | " + " | ".join(verb["vocabularies"][v].values()) + " |")
        L.append("")
        L.append(f"### Pool = all {k - 1} other tasks (chance {100 / (k - 1):.1f} %)")
        L.append("")
        L += _main_table(vsum, verb["per_target"], cfg.n_boot, cfg.seed, 1 / (k - 1))
        L.append("")
        p5 = cfg.verbalizer_pool
        L.append(f"### Seeded pools of {p5} (chance {100 / p5:.0f} %, the published setting)")
        L.append("")
        L += _main_table(vsum5, verb["per_target_pool5"], cfg.n_boot, cfg.seed, 1 / p5)
        L.append("")
        L.append("Published anchor: 66.7 % top-1 for FisherSketch against 20 % (chance) for activation-only similarity.")
        L.append("")
    L.append("## Discussion")
    L.append("")
    L.append(notes or (NOTES_START + "\n(hand-written analysis goes here; kept when the report is regenerated)\n"
                       + NOTES_END))
    L.append("")
    L.append("## Run")
    L.append("")
    L.append("| stage | seconds |")
    L.append("|---|---|")
    for k2, v in tm.items():
        L.append(f"| {k2.removesuffix('_s').replace('_', ' ')} | {v:.0f} |")
    L.append("")
    L.append(f"Machine: 2 shared CPU cores, torch {__import__('torch').__version__}, float32 throughout "
             "(Grams accumulated in float64). Expensive stages checkpoint into the work folder and resume.")
    L.append("")
    L.append("## Files (`" + str(cfg.out) + "`)")
    L.append("")
    L.append("| file | content |")
    L.append("|---|---|")
    L.append("| `gains.parquet` | ground truth, long: `source, target, gain` (nats, drop in mean NLL), `loss_before`, "
             "`loss_after`, `source_group`, `target_group`, `in_pool` (pair is in the target's pool), `is_self` |")
    L.append("| `choices.parquet` | per target × method: `target, target_group, method, method_label, chosen, "
             "chosen_group, n_tied, best, best_group, gain_chosen` (expected over tied picks), `gain_best, gain_min, "
             "top1, pct_oracle, normalised_gain, regret, spearman, n_candidates` |")
    L.append("| `metrics.csv` | per method × target group (`(all)` = every target): `n_targets` and for every metric "
             "its mean, `_lo`, `_hi` (95 % bootstrap) and `_n` (targets where defined); `oracle_share` (Σ pick / Σ "
             "best, with interval) and `pct_oracle_median` |")
    L.append("| `pools.json` | the candidate pool of every target (the audit page must use these pools to score "
             "choices against `gains.parquet`) |")
    L.append("| `recipe.json` | recipe, every setting, evaluated and calibration domains, counts, self-gain check, "
             "timings, versions |")
    L.append("| `exact_vs_sketch.csv` | the sketch-versus-exact summary above |")
    L.append("| `gt_noise.csv` | per target: `stability` (share of evaluation-position resamples in which the best "
             "source stays best), `gap` (g(best) − g(second), nats), `gap_lo` (its 2.5 % bootstrap quantile), "
             "`separated` |")
    L.append("| `calibration.csv`, `calibration_self_gains.csv` | recipe grid on the calibration domains; their self-gains |")
    L.append("| `verbalizer_gains.parquet`, `verbalizer_choices.parquet`, `verbalizer_metrics.csv` | the verbalizer "
             "shift, same schemas (`pool` column: all others / seeded 5) |")
    L.append("")
    return "\n".join(L)
