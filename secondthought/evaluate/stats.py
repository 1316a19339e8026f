"""Statistics the evaluation and the human-evaluation kit share (no Ray)."""

from __future__ import annotations

import numpy as np


def bootstrap(values: np.ndarray, statistic=np.mean, resamples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """The statistic and its 95% percentile-bootstrap interval over rows (scipy.stats.bootstrap)."""
    from scipy.stats import bootstrap as scipy_bootstrap

    values = np.asarray(values)
    point = float(statistic(values))
    if len(values) < 2 or np.all(values == values[0]):
        return point, point, point
    result = scipy_bootstrap((values,), statistic, n_resamples=resamples, method="percentile",
                             random_state=np.random.default_rng(seed), vectorized=False)
    return point, float(result.confidence_interval.low), float(result.confidence_interval.high)
