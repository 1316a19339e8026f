"""Simple, known rewards for checking that the RL loop optimises what it is given."""

import numpy as np


def low_token_ids(items):
    """Share of a completion's tokens whose id is below 8192 (about a sixth of the vocabulary)."""
    return [float(np.mean([t < 8192 for t in item.completion_ids])) for item in items]


def even_token_ids(items):
    """Share of a completion's tokens whose id is even."""
    return [float(np.mean([t % 2 == 0 for t in item.completion_ids])) for item in items]
