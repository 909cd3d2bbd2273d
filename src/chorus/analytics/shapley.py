"""Shapley-value attribution over aggregated journeys (Zhao, Mahboobi & Bagheri 2018, arXiv:1804.05327).

A journey is taken as the *set* of its distinct channels (order and repeats ignored). ``R(T)`` is the KPI
(conversions, or conversion value) of the journeys whose channel set is exactly T, and the worth of a coalition S
is the KPI of every journey whose channel set lies inside S: ``v(S) = sum_{T subset of S} R(T)``, ``v({}) = 0``.
The Shapley value

    phi_j = sum_{S subset of N \\ {j}} |S|! (n - |S| - 1)! / n! * (v(S + j) - v(S))

of this game has a closed form (docs/research/analytics-references.md, section 2): v is a sum of unanimity games
``R(T) u_T``, each of which gives ``R(T) / |T|`` to every member of T, so ``phi_j = sum_{T containing j} R(T) / |T|``:
every converting journey's KPI is split equally among its distinct channels. :func:`shapley_simplified` computes
that; :func:`shapley_exact` evaluates the formula above over all 2^n coalitions (subset sums by a zeta transform),
which gives the same figures and is there to show it (and for n up to ``max_channels``).

Rows without conversions are ignored (they add nothing to any v(S)); rows with an empty path cannot be credited to
any channel and are reported as ``unattributed_*``. Paths are given as for :func:`chorus.analytics.markov.fit_markov`
(sequences of channel names, or strings split on ``sep``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import factorial

import numpy as np

from chorus.analytics.markov import _column, _encode_paths, _n_rows


@dataclass(frozen=True, eq=False)
class ShapleyResult:
    """Credit per channel (``channels`` in order of first appearance); value fields are None without values.

    The attributed figures sum to ``total_*`` minus ``unattributed_*`` (conversions on empty paths).
    """

    channels: tuple[str, ...]
    conversions: np.ndarray
    values: np.ndarray | None
    total_conversions: float
    total_value: float | None
    unattributed_conversions: float
    unattributed_value: float | None


def shapley_simplified(
    paths: Sequence[Sequence[str]] | Sequence[str], conversions, values=None, *, sep: str = ">"
) -> ShapleyResult:
    """Each converting journey's conversions (and value) split equally among its distinct channels."""
    prep = _prepare(paths, conversions, values, sep)
    kpi, rows, chans, n_ch = prep["kpi"], prep["rows"], prep["chans"], len(prep["channels"])
    k = np.bincount(rows, minlength=kpi.shape[0])  # distinct channels per row
    credit = np.zeros((n_ch, kpi.shape[1]))
    if rows.size:
        share = kpi[rows] / k[rows, None]
        for j in range(kpi.shape[1]):
            credit[:, j] = np.bincount(chans, weights=share[:, j], minlength=n_ch)
    return _result(prep, credit)


def shapley_exact(
    paths: Sequence[Sequence[str]] | Sequence[str],
    conversions,
    values=None,
    max_channels: int = 12,
    *,
    sep: str = ">",
) -> ShapleyResult:
    """The Shapley formula evaluated over every coalition of the channels found in converting journeys.

    Channels only in non-converting journeys are null players (0, exactly) and are not enumerated. Raises
    ValueError when more than ``max_channels`` channels appear in converting journeys (2^n coalitions).
    """
    prep = _prepare(paths, conversions, values, sep)
    kpi, rows, chans, n_ch = prep["kpi"], prep["rows"], prep["chans"], len(prep["channels"])
    active = np.unique(chans)
    n = active.size
    if n > max_channels:
        raise ValueError(
            f"shapley_exact enumerates 2^n coalitions: {n} channels appear in converting journeys, more than "
            f"max_channels={max_channels}; use shapley_simplified, which gives the same values in closed form"
        )
    credit = np.zeros((n_ch, kpi.shape[1]))
    if n:
        bit = np.zeros(n_ch, dtype=np.int64)
        bit[active] = 1 << np.arange(n, dtype=np.int64)
        # channel set of each row as a bitmask (a row's channels are distinct here, so a sum is an OR)
        mask = np.bincount(rows, weights=bit[chans], minlength=kpi.shape[0]).astype(np.int64)
        size = 1 << n
        conv_rows = np.flatnonzero(mask)
        v = np.zeros((size, kpi.shape[1]))  # R(T), then v(S) after the zeta transform
        for j in range(kpi.shape[1]):
            v[:, j] = np.bincount(mask[conv_rows], weights=kpi[conv_rows, j], minlength=size)
        for i in range(n):  # v(S) = sum over subsets T of S of R(T): add S without bit i into S, bit by bit
            blocks = v.reshape(-1, 2, 1 << i, kpi.shape[1])
            blocks[:, 1] += blocks[:, 0]
        coalitions = np.arange(size, dtype=np.int64)
        popcount = np.zeros(size, dtype=np.int64)
        for i in range(n):
            popcount += (coalitions >> i) & 1
        weight = np.array([factorial(s) * factorial(n - s - 1) / factorial(n) for s in range(n)])
        for i, c in enumerate(active):
            without = coalitions[((coalitions >> i) & 1) == 0]
            gain = v[without | (1 << i)] - v[without]
            credit[c] = weight[popcount[without]] @ gain
    return _result(prep, credit)


def _prepare(paths, conversions, values, sep) -> dict:
    n = _n_rows(paths)
    codes, lengths, channels = _encode_paths(paths, sep, n)
    conv = _column(conversions, "conversions", n)
    if conv is None:
        raise ValueError("conversions is required")
    val = _column(values, "values", n)
    if val is not None and ((val > 0) & (conv == 0)).any():
        row = int(np.flatnonzero((val > 0) & (conv == 0))[0])
        raise ValueError(f"values must be 0 on rows without conversions (row {row} has a value but no conversion)")
    kpi = conv[:, None] if val is None else np.stack([conv, val], axis=1)
    empty = lengths == 0
    # distinct (row, channel) pairs of the converting rows
    row_of = np.repeat(np.arange(n, dtype=np.int64), lengths)
    tok = (conv > 0)[row_of]
    pairs = np.unique(row_of[tok] * max(len(channels), 1) + codes[tok])
    return {
        "channels": channels,
        "kpi": kpi,
        "rows": pairs // max(len(channels), 1),
        "chans": pairs % max(len(channels), 1),
        "total": kpi.sum(axis=0),
        "unattributed": kpi[empty].sum(axis=0),
        "has_values": val is not None,
    }


def _result(prep: dict, credit: np.ndarray) -> ShapleyResult:
    has_v = prep["has_values"]
    return ShapleyResult(
        channels=prep["channels"],
        conversions=credit[:, 0],
        values=credit[:, 1] if has_v else None,
        total_conversions=float(prep["total"][0]),
        total_value=float(prep["total"][1]) if has_v else None,
        unattributed_conversions=float(prep["unattributed"][0]),
        unattributed_value=float(prep["unattributed"][1]) if has_v else None,
    )
