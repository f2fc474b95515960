"""FisherSketch: streaming sketches of a language model's output-head Fisher information per task.

The library never imports streamlit. Main entry points::

    Sketcher(d, K, m=4096, seed=0, method="fast")   # feature maps + streaming state
    alignment(sig_s, sig_t, form="U")               # ρ_F, ρ_h, ρ_e, κ with standard errors
    kronecker_delta(sig, form="U")                  # δ_T = ‖F − A⊗G‖ / ‖F‖ with its standard error
    fishersketch_core.exact                          # float64 oracle on raw (h, e) arrays
"""
from . import exact
from .align import Alignment, Estimate, KroneckerDelta, alignment, alignment_matrix, kronecker_delta, self_norms
from .signature import COMPAT_KEYS, IncompatibleSignatures, Signature, SketchMeta, check_compatible
from .sketch import METHODS, Sketcher, SketchState, route_halves

__all__ = [
    "COMPAT_KEYS", "METHODS", "Alignment", "Estimate", "IncompatibleSignatures", "KroneckerDelta",
    "Signature", "SketchMeta", "SketchState", "Sketcher", "alignment", "alignment_matrix", "check_compatible",
    "exact", "kronecker_delta", "route_halves", "self_norms",
]
__version__ = "0.1.0"

# Model-side entry points import transformers (seconds): load them only when asked for.
_LAZY = {"load_model": "models", "compute_signature": "compute", "CorpusTask": "tasks",
         "PromptTargetTask": "tasks", "load_task": "tasks", "SignatureStore": "store", "rank_sources": "store"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'fishersketch_core' has no attribute {name!r}")
