"""Benchmark: top-10 ranking over 10,000 stored 4096-d signatures, SQL (DuckDB) against NumPy.

Builds a store of random signatures (clustered, so rankings are not all ties), then for a set of
targets times ``rank_sources`` (SQL; without and with the k standard errors) and a NumPy brute-force
reference over the same vectors held in memory, and checks that both return the same ids in the same
order. Prints a markdown table and writes it, with the command, under "## Store (issue 4)" in
docs/BENCHMARKS.md (other sections are left as they are).

Usage::

    python benchmarks/bench_store.py                 # 10,000 × 4096, 30 targets
    python benchmarks/bench_store.py --n 2000 --no-write   # quick run, BENCHMARKS.md untouched
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fishersketch_core.signature import Signature, SketchMeta  # noqa: E402
from fishersketch_core.store import SignatureStore, TaskRecord, rank_sources  # noqa: E402

SECTION = "## Store (issue 4)"


def synthetic_records(n: int, m: int, seed: int, start: int = 0, clusters: int = 50):
    """Clustered random signatures: halves = cluster centre + task offset + half noise."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(12345).standard_normal((clusters, 3, m)).astype(np.float32)
    meta = SketchMeta(d=576, K=49152, m=m, seed=0, method="fast", model_id="bench", model_hash="bench-hash")
    out = []
    for i in range(n):
        c = centres[rng.integers(clusters)]
        task = c + rng.standard_normal((3, m), dtype=np.float32)
        halves = [np.stack([task[f] + 0.5 * rng.standard_normal(m, dtype=np.float32),
                            task[f] + 0.5 * rng.standard_normal(m, dtype=np.float32)]) for f in range(3)]
        name = f"task{start + i:05d}"
        sig = Signature(*halves, counts=[500, 524], meta=meta.replace(task_name=name))
        out.append(TaskRecord(sig, group=f"g{(start + i) % 20}"))
    return out


def build(path: Path, n: int, m: int, chunk: int = 500) -> float:
    t0 = time.perf_counter()
    with SignatureStore(path) as store:
        for start in range(0, n, chunk):
            store.add_many(synthetic_records(min(chunk, n - start), m, seed=start, start=start))
    return time.perf_counter() - t0


def numpy_reference(mats: dict, norms: dict, ids: np.ndarray, target_row: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: ρ_F for every candidate (float64 accumulate), drop the target, top-k by (score, id)."""
    x = mats["joint"]
    cross = x @ x[target_row].astype(np.float64)
    score = cross / np.sqrt(norms["joint"] * norms["joint"][target_row])
    score[target_row] = -np.inf
    top = np.argpartition(-score, k)[: k + 1]
    top = top[np.lexsort((ids[top], -score[top]))][:k]
    return ids[top], score[top]


def median_ms(times: list[float]) -> float:
    return float(np.median(times) * 1000)


def run(n: int, m: int, k: int, n_targets: int, workdir: Path) -> dict:
    path = workdir / "bench.duckdb"
    build_s = None
    if path.exists():  # --workdir with a store built by an earlier run: reuse it when it fits
        with SignatureStore(path, read_only=True) as store:
            reuse = len(store) == n and set(store.list()["m"]) == {m}
        if not reuse:
            path.unlink()
    if not path.exists():
        build_s = build(path, n, m)
    size_mb = path.stat().st_size / 2**20
    with SignatureStore(path, read_only=True) as store:
        meta, mat = store.matrix("joint")
        ids = meta["id"].to_numpy()
        mats = {"joint": mat.astype(np.float64)}
        norms = {"joint": meta["self_u_joint"].to_numpy()}
        rng = np.random.default_rng(0)
        targets = rng.choice(len(ids), size=n_targets, replace=False)
        rank_sources(store, int(ids[targets[0]]), k=k, with_se=False)  # warm-up (file cache)
        sql_t, sql_cpu, se_t, np_t, max_diff, agree = [], [], [], [], 0.0, 0
        load_before = os.getloadavg()[0]
        for row in targets:
            t0, c0 = time.perf_counter(), time.process_time()
            df = rank_sources(store, int(ids[row]), k=k, by="joint", with_se=False)
            sql_t.append(time.perf_counter() - t0)
            sql_cpu.append(time.process_time() - c0)
            t0 = time.perf_counter()
            rank_sources(store, int(ids[row]), k=k, by="joint", with_se=True)
            se_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ref_ids, ref_scores = numpy_reference(mats, norms, ids, row, k)
            np_t.append(time.perf_counter() - t0)
            agree += int(np.array_equal(df["id"].to_numpy(), ref_ids))
            max_diff = max(max_diff, float(np.max(np.abs(df["score"].to_numpy() - ref_scores))))
        load = max(load_before, os.getloadavg()[0])
    return dict(n=n, m=m, k=k, n_targets=n_targets, build_s=build_s, size_mb=size_mb, load=load,
                sql_cpu_ms=median_ms(sql_cpu), sql_ms=median_ms(sql_t), sql_p90=float(np.percentile(sql_t, 90) * 1000),
                se_ms=median_ms(se_t), np_ms=median_ms(np_t), agree=agree, max_diff=max_diff)


def table(r: dict) -> str:
    ok = "yes" if r["agree"] == r["n_targets"] else "NO"
    return "\n".join([
        f"| method | median latency, top-{r['k']} of {r['n']:,} × {r['m']} | agreement with NumPy |",
        "|---|---|---|",
        f"| SQL `rank_sources(..., with_se=False)` (DuckDB, `list_inner_product` over the FLOAT[{r['m']}] column) | "
        f"**{r['sql_ms']:.1f} ms** (p90 {r['sql_p90']:.1f} ms; CPU {r['sql_cpu_ms']:.1f} ms) | {ok}: {r['agree']}/{r['n_targets']} targets, "
        f"same ids in the same order; max abs ρ_F difference {r['max_diff']:.1e} |",
        f"| SQL `rank_sources(...)` + jackknife SEs for the {r['k']} rows | {r['se_ms']:.1f} ms | same ranking |",
        f"| NumPy brute force (float64 matrix already in memory) | {r['np_ms']:.1f} ms | reference |",
    ])


def write_section(text: str, path: Path = ROOT / "docs" / "BENCHMARKS.md") -> None:
    path.parent.mkdir(exist_ok=True)
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    start = doc.find(SECTION)
    if start == -1:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    else:
        nxt = doc.find("\n## ", start + len(SECTION))
        doc = doc[:start] + text + ("\n" + doc[nxt:] if nxt != -1 else "\n")
    path.write_text(doc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--m", type=int, default=4096)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--targets", type=int, default=30)
    ap.add_argument("--workdir", default=None, help="where to build the store (default: a temp dir, removed)")
    ap.add_argument("--no-write", action="store_true", help="do not touch docs/BENCHMARKS.md")
    args = ap.parse_args()
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-store-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        r = run(args.n, args.m, args.k, args.targets, workdir)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    cmd = "python benchmarks/bench_store.py" + "".join(
        f" --{a} {getattr(args, a)}" for a in ("n", "m", "k", "targets") if getattr(args, a) != ap.get_default(a))
    import duckdb
    body = "\n".join([
        SECTION, "",
        f"Command: `{cmd}` ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
        f"DuckDB {duckdb.__version__}, median over {r['n_targets']} stored targets after one warm-up query; "
        f"1-minute load average during the timing {r['load']:.1f} on the shared machine).",
        f"Store: {r['n']:,} random clustered signatures, m = {r['m']}, built with `add_many`"
        + (f" in {r['build_s']:.0f} s" if r["build_s"] is not None else " (reused from --workdir)")
        + f"; file {r['size_mb']:.0f} MiB (3 full + 6 half FLOAT[m] vectors per task).", "",
        table(r), "",
        "The SQL query scans only the ranked family's `FLOAT[m]` column (one inner product per row, divided "
        "by the stored U-form self-norms; DuckDB spreads the scan over both cores), keeps the top k, then "
        "computes the other two families for those k rows. The 150 ms target is for the SQL ranking; CPU is "
        "the process CPU time of one ranking (both DuckDB threads); contention inflates it too, but less "
        "than wall time.",
    ])
    verdict = ("Target met: median < 150 ms and identical rankings." if r["sql_ms"] < 150 and
               r["agree"] == r["n_targets"] else
               f"Target NOT met in this run (median {r['sql_ms']:.0f} ms"
               + (f", with the machine's 1-minute load at {r['load']:.1f} on {os.cpu_count()} cores: other jobs "
                  "held the CPUs, and the CPU time above is what one ranking needs" if r["load"] > 1.5 else "")
               + "). Rerun `python benchmarks/bench_store.py` on a quiet machine to quote a latency.")
    body += "\n\n" + verdict
    print(body)
    status = 0 if r["agree"] == r["n_targets"] and r["sql_ms"] < 150 else 1
    if not args.no_write:
        write_section(body)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
