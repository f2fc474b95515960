"""Small synthetic signature stores for the app tests (no model, built in a second or two)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fishersketch_core import Sketcher
from fishersketch_core.store import SignatureStore, TaskRecord
from fishersketch_core.synthetic import make_task

GROUPS = ("alpha", "beta", "gamma")


def synthetic_records(n_per_group: int = 4, groups: tuple[str, ...] = GROUPS, m: int = 256, d: int = 16,
                      K: int = 200, n: int = 300, seed: int = 0, model_id: str = "synthetic-model",
                      model_hash: str = "sha256:feedface") -> list[TaskRecord]:
    """Tasks ``<group>-<i>``: tasks of one group share a vocabulary (so they align); the first group is
    decoupled (h and e independent: δ near 0), the others coupled."""
    sk = Sketcher(d, K, m=m, seed=seed)
    recs = []
    for gi, group in enumerate(groups):
        for i in range(n_per_group):
            h, e = make_task(seed=100 * gi + i, n=n, d=d, K=K, coupled=gi > 0, shift=0.3 * i, vocab_seed=gi)
            st = sk.new_state().update(h, e, sequence_ids=np.arange(n))
            name = f"{group}-{i}"
            sig = st.signature(task_name=name, model_id=model_id, model_hash=model_hash)
            recs.append(TaskRecord(sig, name=name, group=group, domain=name, task_type="corpus",
                                   corpus_source="synthetic", tags={"parity": "even" if i % 2 == 0 else "odd"}))
    return recs


def build_store(path: str | Path, **kw) -> Path:
    """Write a synthetic store at ``path`` and return the path."""
    path = Path(path)
    with SignatureStore(path) as st:
        st.add_many(synthetic_records(**kw))
    return path
