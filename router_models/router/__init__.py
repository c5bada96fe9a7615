"""The learned router: signals, rules (YAML), predictors, policies, cascade, decisions, metrics, artifacts.

Heavy imports (sklearn, torch, sentence-transformers) happen inside functions, so importing this is cheap.
"""

from router_models.router.decision import Candidate, Decision
from router_models.router.signals import Constraints

__all__ = ["Candidate", "Constraints", "Decision"]
