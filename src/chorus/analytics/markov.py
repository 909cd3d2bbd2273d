"""Markov-chain (removal-effect) attribution over aggregated journeys, solved exactly.

The model is the one of ChannelAttribution 2.x ``markov_model`` (Altomare & Loris; see
docs/research/analytics-references.md, section 1), computed in closed form instead of by simulation:

* A row is a journey path (channels in time order, raw), its number of ``conversions``, its number of ``nulls``
  (journeys on that path that did not convert) and optionally its total conversion ``values``. Rows may repeat a path.
* States. Order 1: the channels, consecutive repeats collapsed (``A > A > B`` is ``A, B``). Order k: sliding
  windows of k consecutive channels over the raw path (``c1..ck, c2..ck+1, ...``), a path shorter than k is one
  state holding the whole path, and consecutive identical windows are collapsed. Label: channels joined by " > ".
* Transitions. Every step of a row's state sequence, ``(start) -> first state`` included, weighs
  ``conversions + nulls``; the last state goes to ``(conversion)`` with weight ``conversions`` and to ``(null)``
  with weight ``nulls``. Probabilities are the row-normalised weights.
* Removing channel c sends every transition into a state containing c to ``(null)``.
  ``RE_c = 1 - P_-c(conv) / P(conv)`` and ``conversions_c = TotalConv * RE_c / sum RE``. A walk that avoids c is
  the same walk in both chains, so ``P_-c(conv) = P(conv and not visit c)`` and ``RE_c = P(visit c | conv)``: what
  ChannelAttribution estimates by simulation (``T_c / nconv``).

Exact solution. ``Q`` is the transient part of the transition matrix (``(start)`` and the states), ``r`` the column
into ``(conversion)``. ``x = N(start, .)``, the expected number of visits to each transient state starting at
``(start)``, solves ``(I - Q)^T x = e_start`` (one row of the fundamental matrix), and ``P(conv) = r . x``. In the
chain without c the states containing c are never entered, so ``x_-c`` solves the same system restricted to the
other states (zero on the c-states), and ``P_-c(conv) = r . x_-c``.

Value. ChannelAttribution draws, for each simulated conversion, a value from the empirical per-conversion values
(``value_i / conv_i`` weighted by ``conv_i``) of the data rows whose last state is the walk's last state s; so the
expected value of a conversion from s is ``mu_s = sum value_i / sum conv_i`` over those rows. It credits that value
to every channel the walk visited: ``V_c = E[value * 1(conv) * 1(visit c)]`` and
``value_c = TotalValue * V_c / sum V`` (removal effect on value ``V_c / E[value * 1(conv)]``). Derivation: a walk
converts from s at most once, at a step t where it is at s, with probability ``r_s`` from there; so
``E[value * 1(conv) * 1(visit c)] = sum_s mu_s r_s sum_t P(X_t = s, c visited by t)``. Because s is the walk's last
state, "visited c at all" is "visited c by t". ``sum_t P(X_t = s) = N(start, s)``, and
``sum_t P(X_t = s, c not visited by t) = N_-c(start, s)`` (in the chain without c, a walk is at s exactly when the
full walk is at s without having touched c; for s containing c both sides are 0). Hence
``V_c = sum_s mu_s r_s (N(start, s) - N_-c(start, s))``. With a value proportional to conversions (mu constant)
this reduces to the conversion removal effect, and value shares equal conversion shares.

Difference from ChannelAttribution: it drops simulated walks longer than ``max_step`` (by default the longest
path in the data), which biases its figures slightly when the chain has loops; this module has no truncation.
Empty paths are not part of the chain (ChannelAttribution would send them straight from start to conversion):
their conversions and value are reported as ``unattributed_*``.

Inputs: :func:`fit_markov` takes paths as sequences of channel names or as strings split on ``sep``;
:func:`fit_markov_encoded` takes integer-coded channels in a CSR layout (``codes`` + ``offsets``), the fastest
form. Only numpy and scipy are used.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, islice, repeat

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg as spla

START = "(start)"
CONVERSION = "(conversion)"
NULL = "(null)"
STATE_SEP = " > "

# Transient state counts (start included) up to which removal effects use dense LAPACK solves; above, sparse LU.
_DENSE_MAX_STATES = 400
# Largest full transition matrix (states + 3) counted with one dense bincount rather than a sparse COO sum.
_DENSE_COUNT_MAX = 1 << 22
# Rows encoded at a time by fit_markov.
_CHUNK_ROWS = 1 << 16


@dataclass(frozen=True, eq=False)
class MarkovResult:
    """The fitted chain and the attribution.

    ``channels`` are in order of first appearance in the input (every input row counts, weighted or not);
    ``conversions``, ``values``, ``removal_effects`` and ``removal_effects_value`` follow them. ``transition_matrix``
    is a CSR array of transition probabilities over :attr:`labels`: ``(start)``, then ``states``, then
    ``(conversion)`` and ``(null)`` (absorbing, empty rows). ``states`` are ordered by their channels' positions in
    ``channels``, lexicographically (order 1: the channels with a weighted journey, in ``channels`` order).
    ``total_conversions`` / ``total_value`` are over all rows; the attributed figures sum to them minus
    ``unattributed_conversions`` / ``unattributed_value`` (rows with an empty path). The value fields are None when
    no values were given.
    """

    channels: tuple[str, ...]
    conversions: np.ndarray
    values: np.ndarray | None
    removal_effects: np.ndarray
    removal_effects_value: np.ndarray | None
    conversion_probability: float
    states: tuple[str, ...]
    transition_matrix: sp.csr_array
    total_conversions: float
    total_value: float | None
    unattributed_conversions: float
    unattributed_value: float | None
    order: int

    @property
    def labels(self) -> tuple[str, ...]:
        """Row / column labels of :attr:`transition_matrix`."""
        return (START, *self.states, CONVERSION, NULL)

    def transitions(self) -> Iterator[tuple[str, str, float]]:
        """``(channel_from, channel_to, probability)`` for every transition with a positive probability."""
        labels = self.labels
        m = self.transition_matrix
        for i in range(m.shape[0]):
            lo, hi = m.indptr[i], m.indptr[i + 1]
            for j, p in zip(m.indices[lo:hi].tolist(), m.data[lo:hi].tolist(), strict=True):
                if p > 0:
                    yield labels[i], labels[j], p


def fit_markov(
    paths: Sequence[Sequence[str]] | Sequence[str],
    conversions,
    values=None,
    nulls=None,
    order: int = 1,
    *,
    sep: str = ">",
) -> MarkovResult:
    """Fit an order-``order`` Markov attribution model on aggregated journeys.

    ``paths``: one journey per row, in time order, raw (repeats are collapsed here). Either every row is a sequence
    of channel names, taken verbatim, or every row is a string such as ``"email > search > email"``, split on
    ``sep`` with surrounding whitespace stripped from each name and empty names dropped.
    ``conversions``, ``values`` (total conversion value of the row) and ``nulls`` (non-converting journeys on the
    row's path) are per-row non-negative numbers. Rows without conversions and nulls add nothing; rows with an empty
    path are not attributed (see ``unattributed_*``).
    """
    n = _n_rows(paths)
    codes, lengths, channels = _encode_paths(paths, sep, n)
    return _fit(codes, lengths, channels, conversions, values, nulls, order)


def fit_markov_encoded(
    codes,
    offsets,
    channels: Sequence[str],
    conversions,
    values=None,
    nulls=None,
    order: int = 1,
) -> MarkovResult:
    """:func:`fit_markov` on integer-coded paths (the fast input form).

    ``codes``: every row's channels concatenated, as indices into ``channels``; ``offsets`` (length rows + 1,
    starting at 0, non-decreasing, ending at ``len(codes)``): row i is ``codes[offsets[i]:offsets[i + 1]]``.
    The result's ``channels`` is ``tuple(channels)`` in the order given.
    """
    channels = tuple(channels)
    codes = np.asarray(codes)
    offsets = np.asarray(offsets)
    if codes.ndim != 1 or (codes.size and not np.issubdtype(codes.dtype, np.integer)):
        raise ValueError("codes must be a 1-D array of integers")
    if offsets.ndim != 1 or offsets.size < 1 or not np.issubdtype(offsets.dtype, np.integer):
        raise ValueError("offsets must be a 1-D array of integers with one more entry than there are rows")
    if offsets[0] != 0 or offsets[-1] != codes.size or (np.diff(offsets) < 0).any():
        raise ValueError("offsets must start at 0, never decrease and end at len(codes)")
    if codes.size and (codes.min() < 0 or codes.max() >= len(channels)):
        raise ValueError(f"codes must be indices into channels (0..{len(channels) - 1})")
    return _fit(codes.astype(np.int32), np.diff(offsets).astype(np.int64), channels, conversions, values, nulls, order)


# --- input ----------------------------------------------------------------------------------------------------
def _n_rows(paths) -> int:
    try:
        return len(paths)
    except TypeError:
        raise ValueError("paths must be a sequence (list, tuple, array) of journeys") from None


def _encode_paths(paths, sep: str, n: int) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Channel codes (first-appearance order), per-row lengths and the channel names.

    Rows are read in chunks so that only one chunk's token strings exist at a time (a Python string per touchpoint
    costs ~60 bytes; the codes cost 4).
    """
    n_str = sum(map(isinstance, paths, repeat(str, n)))
    if n_str not in (0, n):
        raise ValueError("paths must be all strings or all sequences of channel names, not a mix")
    strings = n_str == n and n > 0
    if strings and (not isinstance(sep, str) or not sep):
        raise ValueError("sep must be a non-empty string")
    names: dict = {}  # channel name -> code, in order of first appearance
    code_of: dict = {}  # raw token -> code (strings: " a ", "a " and " a" are all channel "a")
    chunks, lengths = [], np.empty(n, dtype=np.int64)
    rows_iter = iter(paths)
    for lo in range(0, n, _CHUNK_ROWS):
        part = list(islice(rows_iter, _CHUNK_ROWS))
        if strings and len(sep) == 1:  # one split of the joined rows: no per-row lists (they cost more in GC)
            lengths[lo : lo + len(part)] = np.fromiter(map(str.count, part, repeat(sep)), np.int64, len(part)) + 1
            flat = sep.join(part).split(sep)
        elif strings:
            split = [p.split(sep) for p in part]
            lengths[lo : lo + len(part)] = np.fromiter(map(len, split), np.int64, len(part))
            flat = list(chain.from_iterable(split))
        else:
            lengths[lo : lo + len(part)] = np.fromiter(map(len, part), np.int64, len(part))
            flat = list(chain.from_iterable(part))
        for raw in dict.fromkeys(flat):
            if raw not in code_of:
                code_of[raw] = names.setdefault(raw.strip() if strings else raw, len(names))
        chunks.append(np.fromiter(map(code_of.__getitem__, flat), np.int32, len(flat)))
        del flat
    codes = np.concatenate(chunks) if chunks else np.zeros(0, np.int32)
    del chunks
    names_l = list(names)
    if strings and "" in names:  # empty names ("a >> b", "") are dropped, as ChannelAttribution does
        drop = names[""]
        kept = codes != drop
        rows = np.repeat(np.arange(n), lengths)[kept]
        codes = codes[kept]
        codes -= codes > drop
        lengths = np.bincount(rows, minlength=n).astype(np.int64)
        del names_l[drop]
    return codes, lengths, tuple(names_l)


def _column(x, name: str, n: int, default_zero: bool = False) -> np.ndarray | None:
    if x is None:
        return np.zeros(n) if default_zero else None
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numbers") from None
    if a.ndim != 1:
        raise ValueError(f"{name} must be one number per row (1-D), got shape {a.shape}")
    if a.size != n:
        raise ValueError(f"{name} has {a.size} rows but paths has {n}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite (no NaN or infinity)")
    if (a < 0).any():
        raise ValueError(f"{name} must not be negative (row {int(np.flatnonzero(a < 0)[0])})")
    return a


def _check_order(order) -> int:
    if isinstance(order, bool) or not isinstance(order, int | np.integer) or order < 1:
        raise ValueError(f"order must be an integer >= 1, got {order!r}")
    return int(order)


# --- model ----------------------------------------------------------------------------------------------------
def _fit(codes, lengths, channels, conversions, values, nulls, order) -> MarkovResult:
    n = lengths.size
    order = _check_order(order)
    conv = _column(conversions, "conversions", n)
    if conv is None:
        raise ValueError("conversions is required")
    null = _column(nulls, "nulls", n, default_zero=True)
    val = _column(values, "values", n)
    if val is not None and ((val > 0) & (conv == 0)).any():
        row = int(np.flatnonzero((val > 0) & (conv == 0))[0])
        raise ValueError(f"values must be 0 on rows without conversions (row {row} has a value but no conversion)")

    empty = lengths == 0
    total_conv = float(conv.sum())
    unattributed_conv = float(conv[empty].sum())
    total_val = None if val is None else float(val.sum())
    unattributed_val = None if val is None else float(val[empty].sum())
    keep = ((conv + null) > 0) & ~empty
    if not (conv[keep] > 0).any():
        raise ValueError("conversions: no journey with a non-empty path has a conversion, nothing to attribute")

    # rows that take part in the chain
    codes = codes[np.repeat(keep, lengths)]
    lengths = lengths[keep]
    conv, null = conv[keep], null[keep]
    val = None if val is None else val[keep]
    attributed_conv = float(conv.sum())
    attributed_val = None if val is None else float(val.sum())
    n_ch = len(channels)

    key, row, digits_of = _states(codes, lengths, order, n_ch)
    del codes
    # state ids: keys in ascending order (= lexicographic in channel index, a shorter window first)
    if key.size and int(key.max()) < max(4 * key.size, 1 << 16):
        present = np.zeros(int(key.max()) + 1, dtype=bool)
        present[key] = True
        uniq = np.flatnonzero(present)
        to = (np.cumsum(present, dtype=np.int32) - 1)[key]
    else:
        uniq, to = np.unique(key, return_inverse=True)
        to = to.ravel().astype(np.int32)
    del key
    n_states = uniq.size
    digits = digits_of(uniq)  # (n_states, order) channel index + 1, 0 = none
    states = tuple(STATE_SEP.join(str(channels[d - 1]) for d in ds if d) for ds in digits.tolist())

    # transitions, on the full index: 0 = start, 1..S = states, S+1 = conversion, S+2 = null
    n_full = n_states + 3
    i_conv, i_null = n_states + 1, n_states + 2
    to += 1
    row_start = np.ones(to.size, dtype=bool)
    row_start[1:] = row[1:] != row[:-1]
    frm = np.empty_like(to)
    frm[0] = 0
    frm[1:] = to[:-1]
    frm[row_start] = 0
    last = np.append(np.flatnonzero(row_start[1:]), to.size - 1)  # one per row, rows in order
    del row_start
    last_state = to[last]
    step_w = (conv + null)[row]  # every step of a row weighs its journeys
    del row
    if n_full * n_full <= _DENSE_COUNT_MAX:
        pair = frm.astype(np.int64)
        del frm
        pair *= n_full
        pair += to
        del to
        counts = np.bincount(pair, weights=step_w, minlength=n_full * n_full).reshape(n_full, n_full)
        del pair
    else:
        counts = sp.coo_array((step_w, (frm, to)), shape=(n_full, n_full)).tocsr()
        del frm, to
    del step_w
    end = np.zeros((n_full, 3))  # last state -> (conversion), (null)
    end[:, 1] = np.bincount(last_state, weights=conv, minlength=n_full)
    end[:, 2] = np.bincount(last_state, weights=null, minlength=n_full)
    if isinstance(counts, np.ndarray):
        counts[:, i_conv:] += end[:, 1:]
        counts = sp.csr_array(counts)
    else:
        nz = np.flatnonzero(end[:, 1:].any(axis=1))
        counts = sp.csr_array(
            counts
            + sp.coo_array(
                (np.concatenate([end[nz, 1], end[nz, 2]]), (np.tile(nz, 2), np.repeat([i_conv, i_null], nz.size))),
                shape=(n_full, n_full),
            )
        )
    counts.eliminate_zeros()
    out = np.asarray(counts.sum(axis=1)).ravel()
    inv = np.divide(1.0, out, out=np.zeros_like(out), where=out > 0)
    trans = sp.csr_array(sp.diags_array(inv) @ counts)
    trans.sort_indices()

    # absorbing chain over the transient states 0..S
    n_t = n_states + 1
    q = trans[:n_t, :n_t]
    r = trans[:n_t, [i_conv]].toarray().ravel()
    a_t = sp.csr_array(sp.eye_array(n_t, format="csr") - q).T.tocsr()  # (I - Q)^T
    solve = _dense_solver(a_t) if n_t <= _DENSE_MAX_STATES else _sparse_solver(a_t)
    x = solve(np.ones(n_t, dtype=bool))
    p_conv = float(r @ x)

    mu_r = None
    if val is not None:
        val_sum = np.bincount(last_state, weights=val, minlength=n_t)
        conv_sum = np.bincount(last_state, weights=conv, minlength=n_t)
        mu = np.divide(val_sum, conv_sum, out=np.zeros(n_t), where=conv_sum > 0)
        mu_r = mu * r
    v_base = None if mu_r is None else float(mu_r @ x)

    re = np.zeros(n_ch)
    re_v = None if val is None else np.zeros(n_ch)
    in_state = np.zeros((n_states, n_ch + 1), dtype=bool)  # in_state[s, c + 1]: state s contains channel c
    in_state[np.repeat(np.arange(n_states), digits.shape[1]), digits.ravel()] = True
    for c in np.flatnonzero(in_state[:, 1:].any(axis=0)):
        keep_t = np.ones(n_t, dtype=bool)
        keep_t[1:] = ~in_state[:, c + 1]
        x_c = solve(keep_t)
        re[c] = max(0.0, (p_conv - float(r @ x_c)) / p_conv)
        if re_v is not None and v_base > 0:
            re_v[c] = max(0.0, float(mu_r @ (x - x_c)) / v_base)

    conversions_out = attributed_conv * re / re.sum()
    values_out = None
    if re_v is not None:
        s = re_v.sum()
        values_out = attributed_val * re_v / s if s > 0 else np.zeros(n_ch)

    return MarkovResult(
        channels=tuple(channels),
        conversions=conversions_out,
        values=values_out,
        removal_effects=re,
        removal_effects_value=re_v,
        conversion_probability=p_conv,
        states=states,
        transition_matrix=trans,
        total_conversions=total_conv,
        total_value=total_val,
        unattributed_conversions=unattributed_conv,
        unattributed_value=unattributed_val,
        order=order,
    )


def _states(codes: np.ndarray, lengths: np.ndarray, k: int, n_ch: int):
    """The collapsed state sequence of every row: (state keys, row of each, decoder of keys to digits).

    A key encodes a window as base-(n_ch + 1) digits ``channel + 1`` (0 past the end of a short window), so that
    keys sort lexicographically by channel index.
    """
    m = lengths.size
    if k == 1:
        key = codes
        row = np.repeat(np.arange(m, dtype=np.int32), lengths)
        pos_first = np.zeros(key.size, dtype=bool)
        pos_first[np.cumsum(lengths) - lengths] = True

        def digits_of(u):
            return (u + 1).reshape(-1, 1)
    else:
        nwin = np.where(lengths >= k, lengths - k + 1, 1)
        row = np.repeat(np.arange(m, dtype=np.int32), nwin)
        pos = np.arange(row.size) - np.repeat(np.cumsum(nwin) - nwin, nwin)
        start = np.repeat(np.cumsum(lengths) - lengths, nwin) + pos
        wlen = np.repeat(np.minimum(lengths, k), nwin)
        pos_first = pos == 0
        del pos
        base = n_ch + 1

        def digit(j):
            d = np.zeros(row.size, dtype=np.int64)
            ok = j < wlen
            d[ok] = codes[start[ok] + j] + 1
            return d

        if base**k < 2**62:
            key = np.zeros(row.size, dtype=np.int64)
            for j in range(k):
                key *= base
                key += digit(j)
            weights = base ** np.arange(k - 1, -1, -1, dtype=np.int64)

            def digits_of(u):
                return (u[:, None] // weights) % base
        else:  # too many channels for one int64: number the distinct windows instead (same order)
            table, key = np.unique(np.stack([digit(j) for j in range(k)], axis=1), axis=0, return_inverse=True)
            key = key.ravel()

            def digits_of(u):
                return table[u]

    same = np.zeros(key.size, dtype=bool)
    same[1:] = key[1:] == key[:-1]
    keep = pos_first | ~same  # collapse consecutive identical states within a row
    return key[keep], row[keep], digits_of


def _dense_solver(a_t: sp.csr_array):
    a = a_t.toarray()
    e = np.zeros(a.shape[0])
    e[0] = 1.0

    def solve(keep: np.ndarray) -> np.ndarray:
        x = np.zeros(a.shape[0])
        idx = np.flatnonzero(keep)
        x[idx] = scipy.linalg.solve(a[np.ix_(idx, idx)], e[idx], check_finite=False)
        return x

    return solve


def _sparse_solver(a_t: sp.csr_array):
    e = np.zeros(a_t.shape[0])
    e[0] = 1.0

    def solve(keep: np.ndarray) -> np.ndarray:
        x = np.zeros(a_t.shape[0])
        idx = np.flatnonzero(keep)
        sub = a_t[idx][:, idx].tocsc()
        x[idx] = spla.splu(sub).solve(e[idx])
        return x

    return solve
