"""Customer lifetime value: the BG/NBD purchase model and the Gamma-Gamma spend model, in numpy and scipy.

Both follow ``lifetimes`` 0.11.3 (``BetaGeoFitter``, ``GammaGammaFitter``, ``utils._customer_lifetime_value``) so
that the same data gives the same parameters and predictions; see docs/research/analytics-references.md, section 3.

Inputs are one row per customer (or per distinct pattern, with ``weights`` = how many customers share it):

* ``frequency`` (x): the number of *repeat* purchase periods (the first purchase is not counted);
* ``recency`` (t_x): the time from the first to the last purchase (0 when x = 0);
* ``T``: the time from the first purchase to the end of the observation period;
* ``monetary_value`` (m): the mean value of the repeat purchase periods.

``recency`` and ``T`` may be in any time unit (days, weeks, ...); the fitted ``alpha`` and every ``t`` given to a
prediction are in that same unit. Only :func:`customer_lifetime_value` needs to know the unit (``time_unit_days``).

Fitting
-------
The log-likelihoods are those of Fader, Hardie & Lee (2005, section 7) for BG/NBD and of Hardie's note 025 (eq. 1a)
for Gamma-Gamma, maximised with BFGS over the log of the parameters with hand-written gradients. As in lifetimes:

* BG/NBD works on a time axis scaled so that max(T) = 1 (alpha is scaled back afterwards); both start at
  log-parameters 0.1, and minimise the weighted *mean* negative log-likelihood plus
  ``penalizer * sum(params**2)`` (natural-scale parameters, BG/NBD's alpha on the scaled axis);
* the reported ``log_likelihood`` is the *total*, unpenalised log-likelihood in the caller's time unit (lifetimes'
  ``_negative_log_likelihood_`` is the mean on the scaled axis instead: 0.2503 for CDNOW, where the total here is
  -9582.43).

The rows are first reduced to their distinct patterns with counts, which is exact (the log-likelihood is a sum over
rows), and every term that depends on x alone (the log-gamma and digamma terms) or on T or t_x alone (their
logarithms) is evaluated once per distinct value, so an iteration costs a handful of vector operations over the
distinct patterns whatever the number of customers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import digamma, expit, gammaln, hyp2f1

__all__ = [
    "BGNBDParams",
    "ConvergenceError",
    "GammaGammaParams",
    "customer_lifetime_value",
    "expected_average_value",
    "expected_purchases",
    "expected_purchases_population",
    "fit_bgnbd",
    "fit_gamma_gamma",
    "fit_nbd",
    "month_length",
    "probability_alive",
]

_START = 0.1  # lifetimes' starting point for every log-parameter
_TOL = 1e-7  # lifetimes' default `tol`: the gradient norm BFGS stops at (on the mean log-likelihood)
_ACCEPT_GRAD = 1e-5  # a stop for "precision loss" is accepted only this close to a stationary point
_MAX_ITER = 1_000
_MAX_LOG = 50.0  # the optimiser never evaluates beyond e^±50
_EDGE_LOG = 15.0  # a fitted parameter beyond e^±15 (on a scale where the data's are about 1) is a runaway

# lifetimes' months: "W" 4.345, "D" 30, "H" 720 (= 30 × 24), "M" 1
_WEEKS_PER_MONTH = 4.345
_DAYS_PER_MONTH = 30.0


class ConvergenceError(RuntimeError):
    """The optimiser did not reach a maximum of the likelihood; no parameters are returned. ``runaway`` names the
    parameters that were running off to the edge of the parameter space: "0" or "inf" (empty when it simply did
    not converge), which tells which limit of the model the data point to."""

    def __init__(self, message: str, runaway: dict[str, str] | None = None):
        super().__init__(message)
        self.runaway = runaway or {}


@dataclass(frozen=True)
class BGNBDParams:
    """A fitted BG/NBD model. ``alpha`` is in the time unit of the ``recency`` and ``T`` it was fitted on."""

    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float  # total, unpenalised, in the caller's time unit
    n_customers: int  # the sum of the weights
    n_patterns: int = 0  # distinct (frequency, recency, T) patterns the likelihood was evaluated on
    iterations: int = 0
    penalizer: float = 0.0

    @property
    def dropout(self) -> bool:
        """False for the no-dropout limit a -> 0 (:func:`fit_nbd`): nobody ever drops out, P(alive) = 1."""
        return self.a > 0.0


@dataclass(frozen=True)
class GammaGammaParams:
    """A fitted Gamma-Gamma spend model (p, q, v in the notation of Hardie's note 025; v is in money units)."""

    p: float
    q: float
    v: float
    log_likelihood: float  # total, unpenalised, over the customers with frequency > 0
    n_customers: int  # customers (sum of weights) with frequency > 0
    n_patterns: int = 0
    iterations: int = 0
    penalizer: float = 0.0

    @property
    def population_mean(self) -> float:
        """E[M] = p·v/(q − 1): the expected mean spend of a customer with no repeat purchase (infinite if q ≤ 1)."""
        return self.p * self.v / (self.q - 1.0) if self.q > 1.0 else math.inf


# --- input checks -------------------------------------------------------------------------------------------------
def _array(name: str, value, *, allow_nan: bool = False) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from None
    bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
    if bad.any():
        i = int(np.flatnonzero(bad.ravel())[0])
        raise ValueError(f"{name} must be finite: {int(bad.sum())} value(s) are NaN or infinite (first at index {i})")
    return arr


def _dot(u: np.ndarray, v: np.ndarray) -> float:
    """Σ u·v without BLAS: OpenBLAS' threaded ddot can be 100× slower on a busy machine (measured: 7 ms instead of
    0.07 ms for 178,000 values on 2 shared cores)."""
    return float(np.einsum("i,i->", u, v))


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(np.ravel(mask))[0])


def _check_frequency(x: np.ndarray) -> None:
    if (x < 0).any():
        raise ValueError(f"frequency must be >= 0 (index {_first(x < 0)} is {x.ravel()[_first(x < 0)]})")
    frac = x != np.floor(x)
    if frac.any():
        raise ValueError(f"frequency must be whole numbers (index {_first(frac)} is {x.ravel()[_first(frac)]})")


def _check_rft(x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> None:
    """x, t_x, T already broadcast to one shape."""
    _check_frequency(x)
    if (t_x < 0).any():
        raise ValueError(f"recency must be >= 0 (index {_first(t_x < 0)})")
    if (T < 0).any():
        raise ValueError(f"T must be >= 0 (index {_first(T < 0)})")
    over = t_x > T
    if over.any():
        i = _first(over)
        raise ValueError(f"recency must be <= T ({int(over.sum())} row(s), first at index {i})")
    stray = (x == 0) & (t_x != 0)
    if stray.any():
        raise ValueError(f"recency must be 0 when frequency is 0 ({int(stray.sum())} row(s), first at index "
                         f"{_first(stray)})")  # fmt: skip


def _broadcast(**arrays: np.ndarray) -> list[np.ndarray]:
    try:
        return list(np.broadcast_arrays(*arrays.values()))
    except ValueError:
        shapes = ", ".join(f"{k} {np.shape(v)}" for k, v in arrays.items())
        raise ValueError(f"{', '.join(arrays)} must have the same length (got {shapes})") from None


def _columns(**arrays: np.ndarray) -> None:
    """Fitting inputs: 1-D, same length, not empty."""
    lengths = {}
    for k, v in arrays.items():
        if v.ndim != 1:
            raise ValueError(f"{k} must be one-dimensional (got shape {v.shape})")
        lengths[k] = v.shape[0]
    if len(set(lengths.values())) > 1:
        got = ", ".join(f"{k} {n}" for k, n in lengths.items())
        raise ValueError(f"{', '.join(lengths)} must have the same length (got {got})")
    if not next(iter(lengths.values())):
        raise ValueError(f"{next(iter(lengths))} is empty: nothing to fit")


def _weights(weights, n: int) -> np.ndarray:
    if weights is None:
        return np.ones(n)
    w = _array("weights", weights)
    if w.ndim != 1 or w.shape[0] != n:
        raise ValueError(f"weights must have one value per row ({n}), got shape {w.shape}")
    if (w < 0).any() or (w != np.floor(w)).any():
        raise ValueError("weights must be whole numbers >= 0 (the number of customers sharing each row)")
    return w


def _check_penalizer(penalizer) -> float:
    pen = float(penalizer)
    if not math.isfinite(pen) or pen < 0:
        raise ValueError(f"penalizer must be a finite number >= 0, got {penalizer!r}")
    return pen


def _out(arr: np.ndarray):
    """A scalar for scalar inputs, else the array."""
    return arr[()] if arr.ndim == 0 else arr


# --- optimiser ----------------------------------------------------------------------------------------------------
def _penalised(terms, n: float, pen: float):
    """The objective lifetimes minimises: the mean negative log-likelihood plus ``pen`` · Σ params², and its gradient,
    in log-parameters; ``terms(theta)`` gives the total log-likelihood and its gradient in log-parameters."""

    def objective(theta):
        ll, grad = terms(theta)
        f = -ll / n
        g = -grad / n
        if pen:
            params = np.exp(theta)
            f += pen * _dot(params, params)
            g += 2.0 * pen * params * params
        return f, g

    return objective


def _maximise(objective, names: tuple[str, ...], what: str, offset=0.0):
    """BFGS on log-parameters from lifetimes' start point. ConvergenceError when it does not converge, or when it
    converges towards the edge of the parameter space (a parameter beyond e^±15 relative to its scale, ``offset``
    in log units): then the likelihood has no finite maximum on this data and the "estimates" are an artefact of
    where the optimiser stopped."""

    def guarded(theta):
        if np.any(np.abs(theta) > _MAX_LOG):  # exp() would over/underflow: steer the line search back
            return np.inf, np.zeros_like(theta)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return objective(theta)

    res = minimize(guarded, np.full(len(names), _START), jac=True, method="BFGS", tol=_TOL,
                   options={"maxiter": _MAX_ITER})  # fmt: skip
    finite = bool(np.isfinite(res.fun) and np.all(np.isfinite(res.x)))
    edge = np.abs(res.x - offset) > _EDGE_LOG
    if finite and edge.any():
        runaway = ", ".join(f"{n} = {math.exp(v):.3g}" for n, v, e in zip(names, res.x, edge, strict=True) if e)
        raise ConvergenceError(
            f"{what}: the likelihood has no finite maximum on this data ({runaway} on the fitted scale, still running "
            "off to 0 or infinity when the optimiser stopped): these are not estimates. The data do not "
            "identify the model, e.g. no customer looks lapsed (BG/NBD a -> 0) or every customer buys alike (r, "
            "alpha -> infinity; Gamma-Gamma q, v -> infinity). More customers or a longer observation period help; "
            "a penalizer (0.001-0.1) keeps parameters from running off to infinity (not to 0).",
            {n: ("inf" if v > o else "0") for n, v, o, e in zip(names, res.x, np.broadcast_to(offset, res.x.shape),
                                                                  edge, strict=True) if e},
        )  # fmt: skip
    ok = finite and res.success
    if finite and not res.success:
        # BFGS stops with "precision loss" when the line search cannot improve any more; that is a maximum if
        # the gradient there is (nearly) zero.
        grad = getattr(res, "jac", None)
        ok = grad is not None and bool(np.all(np.isfinite(grad))) and float(np.max(np.abs(grad))) <= _ACCEPT_GRAD
    if not ok:
        raise ConvergenceError(
            f"{what}: the model did not converge (the optimiser stopped after {res.nit} iterations short of a "
            f"maximum; log-parameters {np.round(res.x, 4).tolist()}). The data may not identify the model (e.g. too "
            "few repeat purchases): try a larger penalizer (0.001-0.1)."
        )
    return res


# --- BG/NBD -------------------------------------------------------------------------------------------------------
def _codes(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values, index of each value among them), like np.unique(v, return_inverse=True).

    Whole numbers in a range not much wider than the data (frequencies; times in whole days) take an O(n) path
    through a lookup table instead of np.unique's argsort, which is most of the cost of compressing a million rows.
    """
    if v.size:
        lo, hi = float(v.min()), float(v.max())
        if hi - lo <= 2 * v.size + 4096 and abs(lo) < 2**52 and abs(hi) < 2**52:
            iv = v.astype(np.int64)
            if np.array_equal(iv, v):
                iv -= int(lo)
                present = np.bincount(iv).astype(bool)
                lut = np.cumsum(present) - 1
                return np.flatnonzero(present).astype(np.float64) + lo, lut[iv]
    u, inv = np.unique(v, return_inverse=True)
    return u, inv.reshape(-1)


def _distinct_rows(w: np.ndarray, *codes: tuple[np.ndarray, int]) -> tuple[list[np.ndarray], np.ndarray]:
    """The distinct rows of integer code columns [(codes, number of codes), ...] with their summed weights ``w``:
    ([codes of each distinct row, per column], weights). This is np.unique on the stacked columns (axis=0), which
    takes 2.5 s for a million rows because it lexsorts rows; here the codes are folded into one int64 key."""
    sizes = [n for _, n in codes]
    if math.prod(sizes) >= 2**62:  # the key would overflow: the slow way
        rows, inv = np.unique(np.stack([c for c, _ in codes], axis=1), axis=0, return_inverse=True)
        W = np.bincount(inv.reshape(-1), weights=w, minlength=rows.shape[0])
        return [rows[:, j] for j in range(len(codes))], W
    key = codes[0][0].astype(np.int64)
    for c, n in codes[1:]:
        key = key * n + c
    if np.all(w == 1.0):  # counts need only a sort, not an argsort
        ukey, counts = np.unique(key, return_counts=True)
        W = counts.astype(np.float64)
    else:
        ukey, inv = np.unique(key, return_inverse=True)
        W = np.bincount(inv.reshape(-1), weights=w, minlength=ukey.size)
    cols = []
    for n in reversed(sizes[1:]):
        ukey, c = np.divmod(ukey, n)
        cols.append(c)
    cols.append(ukey)
    return cols[::-1], W


class _Patterns:
    """The distinct (x, t_x, T) rows with their summed weights, grouped for the likelihood: the terms of x alone
    are evaluated per distinct x, those of T per distinct T, and only the mixture term of the customers with
    x > 0 per pattern."""

    def __init__(self, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, w: np.ndarray):
        keep = w > 0
        if not keep.all():
            x, t_x, T, w = x[keep], t_x[keep], T[keep], w[keep]
        ux, ix = _codes(x)
        ut, it = _codes(t_x)
        uT, iT = _codes(T)
        (px, pt, pT), W = _distinct_rows(w, (ix, ux.size), (it, ut.size), (iT, uT.size))
        self.n_customers = float(W.sum())
        self.n_patterns = int(W.size)
        self.ux, self.ut, self.uT = ux, ut, uT
        x_p = ux[px]
        self.Wx = np.bincount(px, weights=W, minlength=ux.size)  # customers per distinct x
        self.sum_wx = _dot(self.Wx, ux)
        self.WT = np.bincount(pT, weights=W, minlength=uT.size)  # customers per distinct T
        self.WxT = np.bincount(pT, weights=W * x_p, minlength=uT.size)  # their repeat purchases
        pos = x_p > 0  # the patterns with the two-branch mixture term
        self.W = W[pos]
        self.x = x_p[pos]
        self.ix, self.it, self.iT = px[pos], pt[pos], pT[pos]


def _bgnbd_terms(theta: np.ndarray, P: _Patterns, uT: np.ndarray, ut: np.ndarray):
    """Total log-likelihood and its gradient in log-parameters, on the time axis of uT/ut.

    ln L = ln A1 + ln A2 + ln(A3 + δ(x>0)·A4) (section 3.2 of the research notes); with d = ln A4 − ln A3,
    ln(A3 + A4) = ln A3 + softplus(d), and ln A3 = −(r + x)·ln(α + T) sums per distinct T.
    """
    r, alpha, a, b = np.exp(theta)
    ux, Wx = P.ux, P.Wx
    n = P.n_customers
    log_alpha = math.log(alpha)
    # ln A1 + ln A2 without the time part: once per distinct x
    ll = (_dot(Wx, gammaln(r + ux) + gammaln(b + ux) - gammaln(a + b + ux))
          + n * (gammaln(a + b) - gammaln(r) - gammaln(b) + r * log_alpha))  # fmt: skip
    g_r = _dot(Wx, digamma(r + ux)) + n * (log_alpha - digamma(r))
    g_alpha = n * r / alpha
    psi_abx = _dot(Wx, digamma(a + b + ux))
    g_a = n * (digamma(a + b)) - psi_abx
    g_b = _dot(Wx, digamma(b + ux)) + n * (digamma(a + b) - digamma(b)) - psi_abx
    # ln A3 for every customer: −Σ w·(r + x)·ln(α + T), per distinct T
    LT = np.log(alpha + uT)
    inv_T = 1.0 / (alpha + uT)
    rxT = r * P.WT + P.WxT
    ll -= _dot(rxT, LT)
    g_r -= _dot(P.WT, LT)
    g_alpha -= _dot(rxT, inv_T)
    if P.W.size:
        # x > 0: softplus(d), d = ln a − ln(b + x − 1) − (r + x)·(ln(α + t_x) − ln(α + T))
        log_bx1 = np.log(b + ux - 1.0, out=np.zeros(ux.size), where=ux > 0)  # x = 0 has no such term
        x, W = P.x, P.W
        rx = r + x
        delta = np.log(alpha + ut)[P.it]
        delta -= LT[P.iT]
        d = (math.log(a) - log_bx1)[P.ix]
        d -= rx * delta
        ll += _dot(W, np.logaddexp(0.0, d))
        w4 = W * expit(d)  # the weight of the "dropped out after the last purchase" branch
        g_r -= _dot(w4, delta)
        dinv = (1.0 / (alpha + ut))[P.it]
        dinv -= inv_T[P.iT]
        g_alpha -= _dot(w4 * rx, dinv)
        g_a += w4.sum() / a
        g_b -= _dot(np.bincount(P.ix, weights=w4, minlength=ux.size), np.exp(-log_bx1))
    return ll, np.array([g_r * r, g_alpha * alpha, g_a * a, g_b * b])


def _rft_inputs(frequency, recency, T, weights, penalizer: float):
    """The checked arrays (frequency, recency, T, weights) and penalizer of a purchase-model fit."""
    x = _array("frequency", frequency)
    t_x = _array("recency", recency)
    T_ = _array("T", T)
    _columns(frequency=x, recency=t_x, T=T_)
    _check_rft(x, t_x, T_)
    return x, t_x, T_, _weights(weights, x.shape[0]), _check_penalizer(penalizer)


def fit_bgnbd(frequency, recency, T, weights=None, penalizer: float = 0.0) -> BGNBDParams:
    """Fit the BG/NBD model (maximum likelihood) to one row per customer, or per pattern with ``weights``.

    ``penalizer`` adds ``penalizer * (r² + α² + a² + b²)`` to the mean negative log-likelihood, with α on the time
    axis scaled to max(T) = 1, exactly as lifetimes' ``penalizer_coef``. Raises ValueError for bad input and
    ConvergenceError when the optimiser fails.
    """
    x, t_x, T_, w, pen = _rft_inputs(frequency, recency, T, weights, penalizer)
    if not (w > 0).any():
        raise ValueError("weights are all 0: nothing to fit")
    if not (w[x > 0] > 0).any():
        raise ValueError("frequency is 0 for every customer: the BG/NBD model needs some repeat purchases")
    max_T = float(T_[w > 0].max())
    if max_T <= 0:
        raise ValueError("T is 0 for every customer: there is no observation time to fit on")

    P = _Patterns(x, t_x, T_, w)
    scale = 1.0 / max_T
    uT_s, ut_s = P.uT * scale, P.ut * scale
    n = P.n_customers

    objective = _penalised(lambda theta: _bgnbd_terms(theta, P, uT_s, ut_s), n, pen)
    res = _maximise(objective, ("r", "alpha", "a", "b"), "fit_bgnbd")
    r, alpha_s, a, b = np.exp(res.x)
    ll_scaled, _ = _bgnbd_terms(res.x, P, uT_s, ut_s)
    # Scaling time by s multiplies each customer's likelihood by s^(−x): ln L = ln L_scaled + Σ w·x·ln(s).
    log_likelihood = float(ll_scaled + P.sum_wx * math.log(scale))
    return BGNBDParams(
        r=float(r),
        alpha=float(alpha_s / scale),
        a=float(a),
        b=float(b),
        log_likelihood=log_likelihood,
        n_customers=int(round(n)),
        n_patterns=P.n_patterns,
        iterations=int(res.nit),
        penalizer=pen,
    )


def fit_nbd(frequency, recency, T, weights=None, penalizer: float = 0.0) -> BGNBDParams:
    """Fit BG/NBD's limit without dropout (a -> 0: every customer stays; Ehrenberg's NBD): repeat purchases are
    Poisson with a gamma(r, alpha) rate over each customer's T. It is what BG/NBD's likelihood tends to when the
    data show no lapsed customer (a fit of BG/NBD then runs a off to 0); ``recency`` only enters the checks.

    Returns BGNBDParams with ``a = b = 0`` (``dropout`` False), which every prediction below understands: E[Y(t)]
    = (r + x)·t / (alpha + T) and P(alive) = 1. ``penalizer`` as in :func:`fit_bgnbd` (on r and the scaled alpha).
    """
    x, t_x, T_, w, pen = _rft_inputs(frequency, recency, T, weights, penalizer)
    if not (w[x > 0] > 0).any():
        raise ValueError("frequency is 0 for every customer: the NBD model needs some repeat purchases")
    max_T = float(T_[w > 0].max())
    if max_T <= 0:
        raise ValueError("T is 0 for every customer: there is no observation time to fit on")
    P = _Patterns(x, t_x, T_, w)
    scale = 1.0 / max_T
    uT_s = P.uT * scale
    n = P.n_customers

    def terms(theta):
        r, alpha = np.exp(theta)
        ll = _dot(P.Wx, gammaln(r + P.ux)) + n * (r * math.log(alpha) - gammaln(r))
        g_r = _dot(P.Wx, digamma(r + P.ux)) + n * (math.log(alpha) - digamma(r))
        g_alpha = n * r / alpha
        LT = np.log(alpha + uT_s)
        rxT = r * P.WT + P.WxT
        ll -= _dot(rxT, LT)
        g_r -= _dot(P.WT, LT)
        g_alpha -= _dot(rxT, 1.0 / (alpha + uT_s))
        return ll, np.array([g_r * r, g_alpha * alpha])

    res = _maximise(_penalised(terms, n, pen), ("r", "alpha"), "fit_nbd")
    r, alpha_s = np.exp(res.x)
    ll_scaled, _ = terms(res.x)
    return BGNBDParams(r=float(r), alpha=float(alpha_s / scale), a=0.0, b=0.0,
                       log_likelihood=float(ll_scaled + P.sum_wx * math.log(scale)), n_customers=int(round(n)),
                       n_patterns=P.n_patterns, iterations=int(res.nit), penalizer=pen)  # fmt: skip


def _ln_hyp2f1(a, b, c, z):
    """ln ₂F₁(a, b; c; z), with lifetimes' fallback: where ₂F₁ overflows, Euler's transform
    ₂F₁(c−a, c−b; c; z)·(1−z)^(c−a−b)."""
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        ln = np.log(hyp2f1(a, b, c, z))
    over = np.isinf(ln)
    if over.any():
        a_, b_, c_, z_ = (v[over] for v in np.broadcast_arrays(a, b, c, z))
        ln = np.array(ln, copy=True)
        ln[over] = np.log(hyp2f1(c_ - a_, c_ - b_, c_, z_)) + (c_ - a_ - b_) * np.log1p(-z_)
    return ln


def _purchases_numerator(params: BGNBDParams, t, x, T_):
    """The numerator of eq. 10: ((a+b+x−1)/(a−1))·[1 − ((α+T)/(α+T+t))^(r+x)·₂F₁(r+x, b+x; a+b+x−1; t/(α+T+t))].
    It depends on (t, x, T) only, not on recency. Without dropout (a = 0): (r + x)·t / (α + T)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    if not params.dropout:
        return (r + x) * t / (alpha + T_)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        c = a + b + x - 1.0
        ln_hyp = _ln_hyp2f1(r + x, b + x, c, t / (alpha + T_ + t))
        return (c / (a - 1.0)) * -np.expm1(ln_hyp + (r + x) * np.log((alpha + T_) / (alpha + T_ + t)))


def _purchases_denominator(params: BGNBDParams, x, t_x, T_):
    """The denominator of eq. 10 (= 1 / P(alive)): 1 + δ(x>0)·(a/(b+x−1))·((α+T)/(α+t_x))^(r+x)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    if not params.dropout:
        return np.ones(np.broadcast(x, t_x, T_).shape)
    with np.errstate(over="ignore"):
        odds = (a / (b + np.maximum(x, 1.0) - 1.0)) * ((alpha + T_) / (alpha + t_x)) ** (r + x)
    return 1.0 + np.where(x > 0, odds, 0.0)


def _pairs(x: np.ndarray, T_: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (x, T) pairs of 1-D x and T and the pair of each row: the hypergeometric term of eq. 10 is
    evaluated once per pair (a few thousand for a million customers with T in days) instead of once per row."""
    ux, ix = _codes(x)
    uT, iT = _codes(T_)
    upair, inv = _codes(ix.astype(np.int64) * uT.size + iT)
    px, pT = np.divmod(upair.astype(np.int64), uT.size)
    return ux[px], uT[pT], inv


def expected_purchases(params: BGNBDParams, t, frequency, recency, T):
    """E[Y(t) | x, t_x, T]: the expected number of purchases in the next ``t`` time units of each customer
    (Fader, Hardie & Lee 2005, eq. 10; lifetimes' ``conditional_expected_number_of_purchases_up_to_time``).
    Arguments broadcast against each other (e.g. one ``t`` for every customer)."""
    t_ = _array("t", t)
    if (t_ < 0).any():
        raise ValueError("t must be >= 0")
    x, t_x, T_ = _broadcast(frequency=_array("frequency", frequency), recency=_array("recency", recency),
                            T=_array("T", T))  # fmt: skip
    _check_rft(x, t_x, T_)
    _broadcast(t=t_, frequency=x)
    denominator = _purchases_denominator(params, x, t_x, T_)
    if t_.ndim == 0 and x.size > 1:
        px, pT, inv = _pairs(x.ravel(), T_.ravel())
        numerator = _purchases_numerator(params, t_, px, pT)[inv].reshape(x.shape)
    else:
        numerator = _purchases_numerator(params, t_, x, T_)
    return _out(np.asarray(numerator / denominator))


def expected_purchases_population(params: BGNBDParams, t):
    """E[X(t)]: the expected number of repeat purchases in ``t`` time units of a new customer (eq. 9)."""
    t_ = _array("t", t)
    if (t_ < 0).any():
        raise ValueError("t must be >= 0")
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    if not params.dropout:
        return _out(r * t_ / alpha)
    hyp = hyp2f1(r, b, a + b - 1.0, t_ / (alpha + t_))
    return _out((a + b - 1.0) / (a - 1.0) * (1.0 - hyp * (alpha / (alpha + t_)) ** r))


def probability_alive(params: BGNBDParams, frequency, recency, T):
    """P(alive | x, t_x, T); exactly 1.0 for customers with no repeat purchase (BG/NBD customers can only drop
    out right after a repeat purchase)."""
    x, t_x, T_ = _broadcast(frequency=_array("frequency", frequency), recency=_array("recency", recency),
                            T=_array("T", T))  # fmt: skip
    _check_rft(x, t_x, T_)
    if not params.dropout:
        return _out(np.ones(x.shape))
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    log_div = (r + x) * np.log((alpha + T_) / (alpha + t_x)) + np.log(a / (b + np.maximum(x, 1.0) - 1.0))
    return _out(np.where(x == 0, 1.0, expit(-log_div)))


# --- Gamma-Gamma --------------------------------------------------------------------------------------------------
def fit_gamma_gamma(frequency, monetary_value, weights=None, penalizer: float = 0.0) -> GammaGammaParams:
    """Fit the Gamma-Gamma spend model to the customers with ``frequency`` > 0.

    Rows with frequency 0 are ignored (their ``monetary_value`` may be anything, NaN included); among the others
    every ``monetary_value`` must be a finite number > 0. ``penalizer`` adds ``penalizer * (p² + q² + v²)`` to the
    mean negative log-likelihood, as lifetimes does. Raises ValueError for bad input and ConvergenceError when the
    optimiser fails.
    """
    x = _array("frequency", frequency)
    m = _array("monetary_value", monetary_value, allow_nan=True)
    _columns(frequency=x, monetary_value=m)
    _check_frequency(x)
    w = _weights(weights, x.shape[0])
    pen = _check_penalizer(penalizer)
    rep = x > 0
    bad = rep & ~(m > 0)  # NaN compares False
    if bad.any():
        i = _first(bad)
        raise ValueError(f"monetary_value must be > 0 where frequency > 0 ({int(bad.sum())} row(s), first at index "
                         f"{i}: {m[i]})")  # fmt: skip
    use = rep & (w > 0)
    if not use.any():
        raise ValueError("frequency is 0 for every customer: the Gamma-Gamma model needs repeat purchases")
    x, m, w = x[use], m[use], w[use]

    ux, ix = _codes(x)
    um, im = _codes(m)
    (pxi, pmi), W = _distinct_rows(w, (ix, ux.size), (im, um.size))
    px, pm = ux[pxi], um[pmi]
    Wx = np.bincount(pxi, weights=W, minlength=ux.size)
    n = float(W.sum())
    # constant parts: Σ w·((p·x − 1)·ln m + p·x·ln x) = p·S1 − S0
    S1 = _dot(W, px * (np.log(pm) + np.log(px)))
    S0 = _dot(W, np.log(pm))
    Wxx = Wx * ux
    xm = px * pm
    log_m_scale = math.log(float(np.median(pm)))  # v is in money units: judged against the typical spend

    def terms(theta):
        p, q, v = np.exp(theta)
        ll = _dot(Wx, gammaln(p * ux + q) - gammaln(p * ux)) - n * gammaln(q) + n * q * math.log(v) + p * S1 - S0
        L = np.log(xm + v)
        WL = W * L
        ll -= p * _dot(WL, px) + q * WL.sum()
        psi = digamma(p * ux + q)
        g_p = _dot(Wxx, psi - digamma(p * ux)) + S1 - _dot(WL, px)
        g_q = _dot(Wx, psi) - n * digamma(q) + n * math.log(v) - WL.sum()
        g_v = n * q / v - _dot(W, (p * px + q) / (xm + v))
        return ll, np.array([g_p * p, g_q * q, g_v * v])

    offset = np.array([0.0, 0.0, log_m_scale])
    res = _maximise(_penalised(terms, n, pen), ("p", "q", "v"), "fit_gamma_gamma", offset=offset)
    p, q, v = np.exp(res.x)
    ll, _ = terms(res.x)
    return GammaGammaParams(p=float(p), q=float(q), v=float(v), log_likelihood=float(ll), n_customers=int(round(n)),
                            n_patterns=int(W.size), iterations=int(res.nit), penalizer=pen)  # fmt: skip


def expected_average_value(gg_params: GammaGammaParams, frequency, monetary_value):
    """E[M | x, m]: each customer's expected mean spend per purchase (Hardie's note 025, eq. 5), a weighted mean of
    their own ``monetary_value`` and the population mean p·v/(q − 1). Customers with frequency 0 get the population
    mean (their ``monetary_value`` is ignored, NaN included). Raises ValueError when q ≤ 1 (no finite mean)."""
    x, m = _broadcast(frequency=_array("frequency", frequency),
                      monetary_value=_array("monetary_value", monetary_value, allow_nan=True))  # fmt: skip
    _check_frequency(x)
    bad = (x > 0) & ~(m > 0)
    if bad.any():
        raise ValueError(f"monetary_value must be > 0 where frequency > 0 (index {_first(bad)})")
    p, q, v = gg_params.p, gg_params.q, gg_params.v
    if q <= 1.0:
        raise ValueError(f"the Gamma-Gamma fit has q = {q:.4g} <= 1: its population mean spend is infinite")
    weight = p * x / (p * x + q - 1.0)
    return _out((1.0 - weight) * (p * v / (q - 1.0)) + weight * np.where(x > 0, m, 0.0))


# --- CLV ----------------------------------------------------------------------------------------------------------
def month_length(time_unit_days: float) -> float:
    """A month in the time unit of T, as lifetimes counts it: 4.345 when the unit is a week (lifetimes' "W"),
    otherwise 30 days (lifetimes' "D" 30 and "H" 720)."""
    unit = float(time_unit_days)
    if not math.isfinite(unit) or unit <= 0:
        raise ValueError(f"time_unit_days must be a number of days > 0, got {time_unit_days!r}")
    if unit == 7.0:
        return _WEEKS_PER_MONTH
    return _DAYS_PER_MONTH / unit


def customer_lifetime_value(
    bgnbd: BGNBDParams,
    gg: GammaGammaParams,
    frequency,
    recency,
    T,
    monetary_value,
    months: int = 12,
    discount_rate: float = 0.01,
    *,
    time_unit_days: float,
):
    """The discounted value of each customer's purchases over the next ``months`` months (lifetimes'
    ``_customer_lifetime_value``)::

        CLV = Σ_{i=1..months} E[M|x,m] · (E[Y(i·f)] − E[Y((i−1)·f)]) / (1 + discount_rate)^i

    with E[Y] from :func:`expected_purchases`, E[M|x,m] from :func:`expected_average_value` and f =
    :func:`month_length` (time_unit_days): the length of a month in the unit of ``recency`` and ``T``, which must
    be the unit ``bgnbd`` was fitted in. ``time_unit_days`` is that unit in days (7 for weeks, 1 for days, 1/24 for
    hours); a month is 30 days, except for weeks, where it is lifetimes' 4.345 weeks, so that the results equal
    lifetimes' with ``freq="W"`` / ``"D"`` / ``"H"``. ``discount_rate`` is monthly.
    """
    value = np.asarray(expected_average_value(gg, frequency, _array("monetary_value", monetary_value, allow_nan=True)))
    return _out(value * np.asarray(discounted_purchases(
        bgnbd, frequency, recency, T, months, discount_rate, time_unit_days=time_unit_days)))  # fmt: skip


def discounted_purchases(
    bgnbd: BGNBDParams, frequency, recency, T, months: int = 12, discount_rate: float = 0.01, *, time_unit_days: float
):
    """Σ_{i=1..months} (E[Y(i·f)] − E[Y((i−1)·f)]) / (1 + discount_rate)^i: each customer's expected purchases
    month by month, discounted (the CLV of a customer whose orders are worth 1)."""
    months_ = int(months)
    if months_ != months or months_ < 1:
        raise ValueError(f"months must be a whole number >= 1, got {months!r}")
    rate = float(discount_rate)
    if not math.isfinite(rate) or rate <= -1.0:
        raise ValueError(f"discount_rate must be a finite number > -1, got {discount_rate!r}")
    f = month_length(time_unit_days)
    x, t_x, T_ = _broadcast(frequency=_array("frequency", frequency), recency=_array("recency", recency),
                            T=_array("T", T))  # fmt: skip
    _check_rft(x, t_x, T_)
    flat = [v.ravel() for v in (x, T_)]
    px, pT, inv = _pairs(*flat)
    # Σ_i discount_i · (E[Y(i·f)] − E[Y((i−1)·f)]): the numerator of E[Y] per (x, T) pair, the denominator per row
    per_pair = np.zeros(px.size)
    previous = np.zeros(px.size)  # E[Y(0)] = 0 exactly
    for i in range(1, months_ + 1):
        current = _purchases_numerator(bgnbd, i * f, px, pT)
        per_pair += (current - previous) / (1.0 + rate) ** i
        previous = current
    return _out(per_pair[inv].reshape(x.shape) / _purchases_denominator(bgnbd, x, t_x, T_))
