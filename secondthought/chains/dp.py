"""Weighted Levenshtein DP over integer-coded units, compiled with numba.

Used only for cost sets that rapidfuzz does not cover (see ``edits._aligned_ops``).
Ties are broken deterministically: on the way back from the end, keep/replace first,
then delete, then insert.
"""

from __future__ import annotations

import numba
import numpy as np

_KEEP, _REPLACE, _DELETE, _INSERT = 0, 1, 2, 3
_TAGS = ("keep", "replace", "delete", "insert")


@numba.njit(cache=True, nogil=True)
def _editops(a, b, ins, dele, rep):
    n, m = a.shape[0], b.shape[0]
    dist = np.empty((n + 1, m + 1), dtype=np.float64)
    for j in range(m + 1):
        dist[0, j] = j * ins
    for i in range(1, n + 1):
        dist[i, 0] = i * dele
        ai = a[i - 1]
        for j in range(1, m + 1):
            diag = dist[i - 1, j - 1] + (0.0 if ai == b[j - 1] else rep)
            up = dist[i - 1, j] + dele
            left = dist[i, j - 1] + ins
            best = diag if diag <= up else up
            dist[i, j] = best if best <= left else left

    i, j = n, m
    out = np.empty((n + m, 3), dtype=np.int64)
    k = 0
    eps = 1e-9
    while i > 0 or j > 0:
        here = dist[i, j]
        if i > 0 and j > 0:
            same = a[i - 1] == b[j - 1]
            if abs(dist[i - 1, j - 1] + (0.0 if same else rep) - here) < eps:
                if not same:
                    out[k, 0], out[k, 1], out[k, 2] = _REPLACE, i - 1, j - 1
                    k += 1
                i -= 1
                j -= 1
                continue
        if i > 0 and abs(dist[i - 1, j] + dele - here) < eps:
            out[k, 0], out[k, 1], out[k, 2] = _DELETE, i - 1, j
            k += 1
            i -= 1
            continue
        out[k, 0], out[k, 1], out[k, 2] = _INSERT, i, j - 1
        k += 1
        j -= 1
    return out[:k][::-1]


def weighted_editops(a: list[int], b: list[int], ins: float, dele: float, rep: float) -> list[tuple[str, int, int]]:
    """Minimum-cost (tag, source index, target index) operations in path order, as rapidfuzz lists them."""
    ops = _editops(np.array(a, dtype=np.int64), np.array(b, dtype=np.int64), float(ins), float(dele), float(rep))
    return [(_TAGS[t], i, j) for t, i, j in ops.tolist()]
