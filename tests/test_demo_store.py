"""The bundled demo store: real SmolLM2 signatures for every bundled domain, δ per domain."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from fishersketch_core import alignment, kronecker_delta
from fishersketch_core.data import list_domains
from fishersketch_core.store import SignatureStore

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo.duckdb"


@pytest.fixture(scope="module")
def demo():
    assert DEMO.exists(), f"{DEMO} is missing: build it with `python -m fishersketch_core domains --store {DEMO}`"
    t0 = time.perf_counter()
    store = SignatureStore(DEMO, read_only=True)
    tasks = store.list()
    opened = time.perf_counter() - t0
    yield store, tasks, opened
    store.close()


def test_demo_store_opens_read_only_quickly(demo):
    _, tasks, opened = demo
    assert len(tasks) > 0
    assert opened < 2.0, f"opening the demo store read-only took {opened:.2f} s"


def test_one_smollm2_signature_per_domain_with_delta(demo):
    store, tasks, _ = demo
    smol = tasks[tasks["model_id"].str.contains("SmolLM2")]
    manifest = list_domains()
    assert sorted(smol["domain"]) == sorted(manifest["domain"]), "every bundled domain has one SmolLM2 signature"
    assert smol["name"].is_unique
    assert set(smol["method"]) == {"fast"} and set(smol["m"]) == {4096} and smol["model_hash"].nunique() == 1
    assert smol["delta_u"].notna().all() and (smol["delta_u_se"] > 0).all()
    assert (smol["n_positions"] >= 1000).all()
    # groups come from the manifest
    assert dict(zip(smol["domain"], smol["group"])) == dict(zip(manifest["domain"], manifest["group"]))


def test_stored_delta_matches_recomputation_and_alignments_are_sane(demo):
    store, tasks, _ = demo
    smol = tasks[tasks["model_id"].str.contains("SmolLM2")].head(6)
    sigs = store.get_many(list(smol["id"]))
    for sig, stored in zip(sigs, smol["delta_u"]):
        assert kronecker_delta(sig).value == pytest.approx(stored, abs=1e-5)
    a = alignment(sigs[0], sigs[1])
    for est in (a.joint, a.activation, a.error):
        assert np.isfinite(est.value) and est.se > 0


def test_second_architecture_at_vocabulary_scale(demo):
    """Gemma 3 270M (K = 262,144) on a balanced subset: δ ≠ 0 holds there too."""
    _, tasks, _ = demo
    gemma = tasks[tasks["model_id"].str.contains("gemma", case=False)]
    assert len(gemma) >= 20
    assert set(gemma["K"]) == {262_144} and set(gemma["d"]) == {640}
    assert gemma["group"].nunique() >= 5
    assert (gemma["delta_u"] - 2 * gemma["delta_u_se"] > 0).mean() >= 0.9
