"""Quality predictors behind one contract, and the name -> class registry (importing registers them)."""

from router_models.router.predictors import baselines, bayes, knn, logistic, mf, stack  # noqa: F401
from router_models.router.predictors.base import (
    PREDICTORS,
    Features,
    Predictor,
    QualityPrediction,
    get_predictor,
)

__all__ = ["PREDICTORS", "Features", "Predictor", "QualityPrediction", "get_predictor"]
