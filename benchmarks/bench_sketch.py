"""Sketch cost and accuracy at the default model's shape (d = 576, K = 49,152).

Prints, and writes to docs/BENCHMARKS.md (section "Sketch (issue 2)"):
1. seconds per 1,024 positions for the dense and fast methods at m = 4,096, measured side by side
   in one run (each in a fresh subprocess so that its peak memory is its own);
2. |ρ̂_F − ρ_F| against the exact float64 oracle on a synthetic coupled pair;
3. the RMS error of ρ̂_F over seeds at m = 1,024, 4,096 and 16,384 beside the ideal
   inner-product-sketch reference √((1+ρ²)/m).

Usage: python benchmarks/bench_sketch.py [--seeds 6] [--dense-seeds 3] [--no-write]
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

D, K, N = 576, 49_152, 1024


DATA_FILE = Path("/tmp/fishersketch_bench_sketch_tasks.npz")
REAL_PAIR = ("wordnet-noun.artifact", "code-python")


def prepare_tasks(source: str) -> str:
    """Write the two benchmark tasks (h, e float32) to DATA_FILE; return a description.

    ``real``: head inputs of two bundled domains' probe splits, cached by
    ``python -m fishersketch_core domains``, with e = softmax(h Wᵀ) − onehot(y) from SmolLM2's head.
    ``synthetic``: two coupled synthetic tasks (fishersketch_core.synthetic).
    """
    if source == "real":
        import torch
        from fishersketch_core.domains import default_cache, load_cached
        from fishersketch_core.models import load_model
        lm = load_model()
        W = lm.model.get_output_embeddings().weight.detach().float()  # (K, d)
        arrays, names = {}, []
        for tag, dom in zip("st", REAL_PAIR):
            c = load_cached(default_cache(), lm.model_hash, dom, "probe")
            h = torch.from_numpy(c["h"][:N].astype(np.float32))
            e = torch.softmax(h @ W.T, dim=-1)
            e[torch.arange(len(h)), torch.from_numpy(c["targets"][:N]).long()] -= 1.0
            arrays[f"h_{tag}"], arrays[f"e_{tag}"] = h.numpy(), e.numpy()
            arrays[f"ids_{tag}"] = c["sequence_ids"][:N].astype(np.int64)
            names.append(dom)
        desc = f"real probe positions of {names[0]} and {names[1]} (SmolLM2-135M head inputs and errors)"
    else:
        from fishersketch_core.synthetic import make_task
        arrays = {}
        for tag, seed, shift in (("s", 1, 0.0), ("t", 2, 0.3)):
            h, e = make_task(seed, n=N, d=D, K=K, coupled=True, shift=shift)
            arrays[f"h_{tag}"], arrays[f"e_{tag}"] = h.astype(np.float32), e.astype(np.float32)
            arrays[f"ids_{tag}"] = np.arange(N)
        desc = "two coupled synthetic tasks (fishersketch_core.synthetic.make_task)"
    np.savez(DATA_FILE, **arrays)
    return desc


def _task(tag: str, with_ids: bool = False):
    with np.load(DATA_FILE) as npz:
        arrays = (npz[f"h_{tag}"], npz[f"e_{tag}"])
        return arrays + (npz[f"ids_{tag}"],) if with_ids else arrays


def time_one(method: str, repeats: int) -> dict:
    """Run in a subprocess: seconds per 1,024 positions and peak RSS of the process."""
    import torch
    from fishersketch_core import Sketcher
    h, e = _task("s")
    # Reset the peak-RSS mark after loading the data, so the peak below is the sketch's own
    # (Linux: writing 5 to clear_refs resets VmHWM).
    Path("/proc/self/clear_refs").write_text("5")
    base_rss = _vm("VmRSS")
    sk = Sketcher(D, K, m=4096, seed=0, method=method)
    ht, et = torch.from_numpy(h), torch.from_numpy(e)
    sk.new_state().update(ht[:128], et[:128])  # warm-up (thread pools, first allocations)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sk.new_state().update(ht, et)
        times.append(time.perf_counter() - t0)
    peak = _vm("VmHWM")
    return {"method": method, "seconds": float(np.median(times)), "all": times, "threads": torch.get_num_threads(),
            "peak_rss_mb": peak / 1024, "extra_rss_mb": (peak - base_rss) / 1024}


def _vm(field: str) -> int:
    """A VmRSS/VmHWM line of /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def accuracy(seeds: int, dense_seeds: int) -> dict:
    from fishersketch_core import Sketcher, alignment, exact
    from fishersketch_core import route_halves
    (*S, ids_s), (*T, ids_t) = _task("s", True), _task("t", True)
    ex = exact.alignment(*S, *T, form="U", with_se=False)
    # what the sketch estimates: the cross-half statistic on the same positions (sampling noise aside)
    ex_split = exact.alignment(*S, *T, form="split", halves_s=route_halves(ids_s), halves_t=route_halves(ids_t),
                               with_se=False)
    rows = []
    for method in ("fast", "dense"):
        for m in (1024, 4096, 16384):
            n_seeds = seeds if method == "fast" else dense_seeds
            errs, ses = [], []
            for seed in range(n_seeds):
                sk = Sketcher(D, K, m=m, seed=seed, method=method)
                a = alignment(sk.new_state().update(*S, sequence_ids=ids_s).signature(),
                              sk.new_state().update(*T, sequence_ids=ids_t).signature())
                errs.append(a.joint.value - ex_split.joint.value)
                ses.append(a.joint.se)
                print(f"  {method} m={m} seed={seed}: ρ̂_F={a.joint.value:.4f} (exact {ex.joint.value:.4f})", flush=True)
            rms = math.sqrt(float(np.mean(np.square(errs))))
            ideal = math.sqrt((1 + ex.joint.value ** 2) / m)
            rows.append({"method": method, "m": m, "seeds": n_seeds, "rms": rms, "ideal": ideal,
                         "ratio": rms / ideal, "mean_abs": float(np.mean(np.abs(errs))),
                         "mean_se": float(np.mean(ses))})
    return {"exact_split_rho_f": ex_split.joint.value, "exact_rho_f": ex.joint.value, "exact_rho_h": ex.activation.value,
            "exact_rho_e": ex.error.value, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=6, help="seeds per m for the fast method")
    ap.add_argument("--dense-seeds", type=int, default=3, help="seeds per m for the dense method (slow)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--source", choices=["real", "synthetic"], default="real",
                    help="real: two bundled domains' cached head inputs (needs the domains job); synthetic: generated")
    ap.add_argument("--_time", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._time:
        print(json.dumps(time_one(args._time, args.repeats)))
        return
    desc = prepare_tasks(args.source)
    timings = {}
    for method in ("fast", "dense"):  # side by side, same run, fresh process each
        out = subprocess.run([sys.executable, __file__, "--_time", method, "--repeats", str(args.repeats)],
                             capture_output=True, text=True, check=True)
        timings[method] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{method}: {timings[method]['seconds']:.3f} s per {N} positions, "
              f"peak RSS {timings[method]['peak_rss_mb']:.0f} MB", flush=True)
    acc = accuracy(args.seeds, args.dense_seeds)
    speedup = timings["dense"]["seconds"] / timings["fast"]["seconds"]
    lines = [
        f"Data: {desc}.",
        f"Shape: d = {D}, K = {K:,}, m = 4,096, {N:,} positions; 2-core CPU shared with other jobs, "
        f"torch threads = {timings['fast']['threads']}.",
        "",
        "| method | s per 1,024 positions | peak RSS of the process (MB) | RSS added by sketching (MB) |",
        "|---|---|---|---|",
    ]
    for method in ("dense", "fast"):
        t = timings[method]
        lines.append(f"| {method} | {t['seconds']:.3f} | {t['peak_rss_mb']:.0f} | {t['extra_rss_mb']:.0f} |")
    lines += ["", f"Fast is **{speedup:.1f}×** cheaper than dense per position (same run).", "",
              f"Exact ρ_F = {acc['exact_rho_f']:.4f} in the full U form (ρ_h = {acc['exact_rho_h']:.4f}, "
              f"ρ_e = {acc['exact_rho_e']:.4f}); {acc['exact_split_rho_f']:.4f} in the cross-half form the sketch "
              "estimates (same positions, same halves). Error of ρ̂_F against the latter, over seeds:", "",
              "| method | m | seeds | mean abs error | RMS error | ideal √((1+ρ²)/m) | RMS / ideal | mean reported SE |",
              "|---|---|---|---|---|---|---|---|"]
    for r in acc["rows"]:
        lines.append(f"| {r['method']} | {r['m']:,} | {r['seeds']} | {r['mean_abs']:.4f} | {r['rms']:.4f} | "
                     f"{r['ideal']:.4f} | {r['ratio']:.2f} | {r['mean_se']:.4f} |")
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        cmd = "python benchmarks/bench_sketch.py " + " ".join(sys.argv[1:])
        write_section("Sketch (issue 2)", f"Command: `{cmd.strip()}`\n\n{table}\n")


def write_section(title: str, body: str, path: Path = ROOT / "docs" / "BENCHMARKS.md") -> None:
    """Replace (or append) the '## title' section of docs/BENCHMARKS.md, leaving others intact."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEach section names the command that produced it.\n"
    head = f"## {title}"
    start = text.find(head)
    if start >= 0:
        nxt = text.find("\n## ", start + len(head))
        text = text[:start] + text[nxt + 1 if nxt >= 0 else len(text):]
    text = text.rstrip("\n") + f"\n\n{head}\n\n{body}"
    path.write_text(text)


if __name__ == "__main__":
    main()
