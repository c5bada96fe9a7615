"""The learned router: signals, rules (YAML), predictors, policies, cascade, decisions, metrics, artifacts.

Heavy imports (sklearn, torch, sentence-transformers) happen inside functions, so importing this is cheap.
"""

# The router's default prompt embedder: in 5-fold CV on RouterBench train the 64-d static model recovered
# more of the gap than MiniLM (stack 0.201 vs 0.184) and embeds a prompt ~15x faster (route() p50 4.7 vs
# 77 ms). Here rather than in features.py: the CLI's option default then imports no pandas for `--help`.
ROUTER_EMBEDDER = "static"

from router_models.router.decision import Candidate, Decision  # noqa: E402
from router_models.router.signals import Constraints  # noqa: E402

__all__ = ["ROUTER_EMBEDDER", "Candidate", "Constraints", "Decision"]
