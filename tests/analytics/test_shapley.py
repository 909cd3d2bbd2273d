"""Shapley attribution (chorus.analytics.shapley): Zhao et al.'s simplified form, the full formula, the axioms."""

from __future__ import annotations

from itertools import permutations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chorus.analytics.shapley import shapley_exact, shapley_simplified


def as_dict(result, field="conversions"):
    return dict(zip(result.channels, getattr(result, field).tolist(), strict=True))


def test_hand_example():
    # A>B converts 2 (value 20), A converts 1 (5), B>C>B converts 3 (60), C and D never convert.
    # Simplified: A = 2/2 + 1 = 2, B = 2/2 + 3/2 = 2.5, C = 3/2; value A = 10 + 5, B = 10 + 30, C = 30; D = 0.
    # The formula with v(S) = KPI of journeys whose channel set lies in S (players A, B, C; D is a null player):
    # v(A) = 1, v(B) = v(C) = 0, v(AB) = 3, v(AC) = 1, v(BC) = 3, v(ABC) = 6; weights 1/3 (|S| = 0 or 2), 1/6 (|S| = 1):
    # phi_A = 1/3 (1 - 0) + 1/6 (3 - 0) + 1/6 (1 - 0) + 1/3 (6 - 3) = 1/3 + 1/2 + 1/6 + 1 = 2.
    paths = [("A", "B"), ("A",), ("B", "C", "B"), ("C",), ("D",)]
    conv, val = [2, 1, 3, 0, 0], [20.0, 5.0, 60.0, 0.0, 0.0]
    for fn in (shapley_simplified, shapley_exact):
        r = fn(paths, conv, val)
        assert r.channels == ("A", "B", "C", "D")
        np.testing.assert_allclose(r.conversions, [2, 2.5, 1.5, 0])
        np.testing.assert_allclose(r.values, [15, 40, 30, 0])
        assert (r.total_conversions, r.total_value) == (6, 85)
        assert (r.unattributed_conversions, r.unattributed_value) == (0, 0)


def test_order_repeats_strings_and_empty_paths():
    a = shapley_simplified([("A", "B", "A"), ("B",), ()], [4, 1, 2], [40.0, 1.0, 9.0])
    b = shapley_simplified(["B > A", " B ", ""], [4, 1, 2], [40.0, 1.0, 9.0])
    assert as_dict(a) == as_dict(b) == {"A": 2.0, "B": 3.0}
    assert as_dict(a, "values") == {"A": 20.0, "B": 21.0}
    assert (a.total_conversions, a.unattributed_conversions) == (7, 2)
    assert (a.total_value, a.unattributed_value) == (50, 9)
    r = shapley_exact(["B > A", " B ", ""], [4, 1, 2])
    assert as_dict(r) == pytest.approx({"A": 2.0, "B": 3.0})
    assert r.values is None and r.total_value is None and r.unattributed_value is None


def test_max_channels():
    many = [tuple(f"c{i}" for i in range(13))]
    with pytest.raises(ValueError, match=r"13 channels appear in converting journeys.*use shapley_simplified"):
        shapley_exact(many, [1])
    with pytest.raises(ValueError, match="max_channels=3"):
        shapley_exact([("a", "b"), ("c", "d")], [1, 1], max_channels=3)
    # channels only seen in non-converting journeys are null players: they are not enumerated
    r = shapley_exact([*many, ("x", "y", "c0")], [1, 0], max_channels=13)
    assert r.conversions[-2:].tolist() == [0, 0]
    assert r.conversions.sum() == pytest.approx(1)
    np.testing.assert_allclose(r.conversions[:13], 1 / 13)


def test_input_errors():
    with pytest.raises(ValueError, match="conversions has 1 rows but paths has 2"):
        shapley_simplified([("a",), ("b",)], [1])
    with pytest.raises(ValueError, match="conversions must not be negative"):
        shapley_exact([("a",), ("b",)], [1, -1])
    with pytest.raises(ValueError, match="values must be 0 on rows without conversions"):
        shapley_simplified([("a",), ("b",)], [1, 0], [1.0, 2.0])


# --- properties -----------------------------------------------------------------------------------------------------
def naive_shapley(paths, kpi):
    """Average marginal contribution over every ordering of the players, v(S) straight from its definition."""
    players = sorted({c for p, k in zip(paths, kpi, strict=True) if k for c in p})
    sets = [(frozenset(p), k) for p, k in zip(paths, kpi, strict=True) if p]

    def v(s):
        return sum(k for t, k in sets if t <= s)

    phi = dict.fromkeys(players, 0.0)
    orders = list(permutations(players))
    for order in orders:
        s = frozenset()
        for c in order:
            phi[c] += v(s | {c}) - v(s)
            s |= {c}
    return {c: x / len(orders) for c, x in phi.items()}


rows = st.lists(
    st.tuples(st.lists(st.sampled_from("ABCDEFGH"), max_size=6).map(tuple), st.integers(0, 4), st.integers(0, 30)),
    min_size=1,
    max_size=12,
)


def unpack(data):
    return [r[0] for r in data], [r[1] for r in data], [float(r[1] * r[2]) for r in data]


@settings(max_examples=150, deadline=None)
@given(data=rows)
def test_exact_equals_simplified_and_efficiency(data):
    paths, conv, val = unpack(data)
    simple = shapley_simplified(paths, conv, val)
    exact = shapley_exact(paths, conv, val)
    assert exact.channels == simple.channels
    np.testing.assert_allclose(exact.conversions, simple.conversions, atol=1e-9)
    np.testing.assert_allclose(exact.values, simple.values, atol=1e-7)
    converting = sum(c for p, c in zip(paths, conv, strict=True) if p)
    value = sum(x for p, x in zip(paths, val, strict=True) if p)
    for r in (simple, exact):  # efficiency: the credit adds up to the KPI of converting (non-empty) journeys
        assert r.conversions.sum() == pytest.approx(converting)
        assert r.values.sum() == pytest.approx(value)
        assert r.unattributed_conversions == sum(conv) - converting


@settings(max_examples=40, deadline=None)
@given(data=st.lists(st.tuples(st.lists(st.sampled_from("ABCDE"), max_size=4).map(tuple), st.integers(0, 3)),
                     min_size=1, max_size=6))  # fmt: skip
def test_exact_matches_the_permutation_definition(data):
    paths, conv = [r[0] for r in data], [r[1] for r in data]
    expected = naive_shapley(paths, conv)
    got = as_dict(shapley_exact(paths, conv))
    for c, x in got.items():
        assert x == pytest.approx(expected.get(c, 0.0), abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(data=rows, seed=st.integers(0, 2**16))
def test_symmetry_and_null_players(data, seed):
    rng = np.random.default_rng(seed)
    paths, conv, val = unpack(data)
    # S and T always come together (in either order): equal credit. N is only on journeys that do not convert.
    together = []
    for p, c in zip(paths, conv, strict=True):
        p = list(p)
        if p and rng.random() < 0.5:
            i = int(rng.integers(0, len(p) + 1))
            p[i:i] = ["S", "T"] if rng.random() < 0.5 else ["T", "S"]
        if c == 0 and rng.random() < 0.5:
            p.append("N")
        together.append(tuple(p))
    together.append(("N", "Z"))  # Z is only here, on a row without conversions
    conv2, val2 = [*conv, 0], [*val, 0.0]
    for fn in (shapley_simplified, shapley_exact):
        r = fn(together, conv2, val2, **({"max_channels": 12} if fn is shapley_exact else {}))
        got, got_v = as_dict(r), as_dict(r, "values")
        if "S" in got:
            assert got["S"] == pytest.approx(got["T"], abs=1e-12)
            assert got_v["S"] == pytest.approx(got_v["T"], abs=1e-9)
        assert got["N"] == 0 and got["Z"] == 0 and got_v["N"] == 0
        # the null players change nobody else's credit
        without = fn([tuple(c for c in p if c not in ("N", "Z")) for p in together], conv2, val2)
        assert as_dict(without) == pytest.approx({c: x for c, x in got.items() if c not in ("N", "Z")})
