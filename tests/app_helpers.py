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


def save_tiny_model(folder: str | Path, seed: int = 0) -> Path:
    """A tiny random-initialised Llama model + byte-level tokenizer saved as a Hugging Face folder
    (what the app's "local model path" accepts; no download)."""
    from lm_helpers import HF_VOCAB, char_tokenizer_fast, tiny_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_model("llama", vocab=HF_VOCAB, ctx=128, seed=seed)
    model.save_pretrained(folder)
    char_tokenizer_fast().save_pretrained(folder)
    return folder


def plotly_spec(at, key: str) -> dict:
    """The figure JSON of the plotly chart drawn with ``key`` in an AppTest run."""
    import json

    for el in at.get("plotly_chart"):
        if el.proto.id.endswith(f"-{key}"):
            return json.loads(el.proto.spec)
    raise KeyError(f"no plotly chart with key {key!r}; charts: {[e.proto.id for e in at.get('plotly_chart')]}")


def arr(value) -> "np.ndarray":
    """A plotly JSON array as numpy: plain lists, or typed arrays ``{"dtype", "bdata"[, "shape"]}``."""
    import base64

    if isinstance(value, dict) and "bdata" in value:
        out = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        if "shape" in value:
            shape = value["shape"]
            shape = [int(s) for s in shape.split(",")] if isinstance(shape, str) else list(shape)
            out = out.reshape(shape)
        return out
    return np.asarray(value)


def frame(at, *columns: str):
    """The value (DataFrame) of the first st.dataframe in an AppTest run that has all ``columns``
    (display-only dataframes carry no key in AppTest)."""
    for d in at.dataframe:
        df = d.value
        if all(c in df.columns for c in columns):
            return df
    raise KeyError(f"no dataframe with columns {columns}; have {[list(d.value.columns)[:6] for d in at.dataframe]}")
