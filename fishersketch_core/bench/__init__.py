"""Does FisherSketch pick the right source? Ground-truth transfer, baselines and the verbalizer shift.

* :mod:`.groundtruth` — head-only adaptation from cached head inputs and the gains g(s → t);
* :mod:`.baselines` — every similarity method of DESIGN.md §5 as a (tasks × tasks) score matrix;
* :mod:`.metrics` — top-1, % of oracle, normalised gain, regret, Spearman; bootstrap intervals;
* :mod:`.verbalizer` — the verbalizer-shift task family (identical prompts, different answer words);
* :mod:`.run` — the ``benchmark`` command; :mod:`.report` — result files and docs/RESULTS.md.

``python -m fishersketch_core benchmark --help``
"""
from .groundtruth import Recipe, adapt_head, compute_gains, mean_nll
from .metrics import bootstrap_ci, evaluate_method, pool_metrics, summarise
from .run import BenchConfig, register_cli, run_benchmark

__all__ = ["BenchConfig", "Recipe", "adapt_head", "bootstrap_ci", "compute_gains", "evaluate_method", "mean_nll",
           "pool_metrics", "register_cli", "run_benchmark", "summarise"]
