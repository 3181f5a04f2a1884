"""Drift statistics from a window's counts against its reference profile (issue 9).

One implementation for the device and the hub: every statistic reads only the profile and a
:class:`~modelfleet.monitoring.profile_counts.ProfileWindow` (counts that merge exactly, and
KLL sketches), never raw rows. Per column (input feature or model output) and test:

==============  ===========================================================  ==============
test            value                                                        drift when
==============  ===========================================================  ==============
``psi``         Σ (q − p) · ln(q / p) over the buckets (missing included)   ≥ 0.1 (band
                either side saw, each smoothed by ``psi_epsilon`` = 0.5     "moderate";
                pseudo-counts (Laplace)                                     ≥ 0.25 "major")
``js``          Jensen–Shannon *distance* (√divergence), base 2, in [0, 1]  ≥ 0.1
``hellinger``   √(1 − Σ √(p·q)), in [0, 1]                                  ≥ 0.1
``wasserstein`` W1 of the binned distributions (uniform within a bucket,    ≥ 0.1
                under/overflow at the outer edges) / max(reference std,
                0.001) — numeric only
``chi_square``  homogeneity χ² of reference vs window counts (buckets       p < 0.05
                neither saw dropped; numeric under/overflow pooled into
                their neighbours so no expected count is ~0), p from χ²
``ks``          D = max |F_ref − F_cur| at the union of both sketches'      p < 0.05
                retained values, less both sketches' rank-error bounds;
                p from ``kstwo`` (``kstwobign`` above 10,000) at
                n_eff = n·m / (n + m) — numeric only, sketches needed
==============  ===========================================================  ==============

**Sample-size policy**: a column with fewer than ``min_count`` rows in the window (200 by
default; for ``wasserstein`` and ``ks``, non-missing rows) gets ``insufficient_data`` and no
value — never a verdict.

**Combined score** (one per model and window; :func:`evaluate`). Each column with enough
rows has one p-value, its ``chi_square`` test (exact counts: the same at every merge level,
and reproducible, unlike the randomised sketches). The family of these p-values (inputs and
outputs together) is corrected with **Holm–Bonferroni** at ``alpha`` (0.001): the chance that
a window of stable data flags any column is at most ``alpha`` (up to the χ² approximation
of the p-values), whatever the number of columns and their dependence. A column *drifts*
when its Holm-adjusted p-value is ≤ ``alpha`` **and** its PSI is ≥ ``psi_threshold``
(0.1): significance guards small windows, the effect size guards large ones (millions of
rows at the hub make any χ² significant).
The model's **score** is the largest PSI among drifting columns (0 when none), so the PSI
bands read on it too; its verdict is ``drift`` when any column drifts,
``insufficient_data`` when no column has enough rows. Measured over stable windows of 53
columns (``benchmarks/drift.py``, ``docs/benchmarks.md``): 0–0.2 % of 200-row windows
alarm (0 of 1,000, 2 of 1,000, 2 of 2,000 in three runs; Holm alone at alpha = 0.01 gave
1.3 %), none of 1,000-row windows (the PSI floor); an uncorrected χ² at 0.05 flags over
90 % of the same windows.

Why χ² and not KS for the combined verdict: the counts merge exactly, so the verdict for
a site or the fleet is the same whichever way the windows were merged, and it is
reproducible; KS reads the sketches, which are randomised (it is reported per column).
χ² pools a numeric column's under/overflow into the neighbouring buckets (a single value
past the reference range would otherwise give p ≈ 0 on an expected count of ~0); PSI does
not, and the PSI floor keeps a few stray values (or a rare new category) from drifting a
column. A constant reference column therefore has one bucket for χ² and never joins the
combined verdict; its PSI result still shows a change.

Distances are plain NumPy; p-values need SciPy (imported when first needed; it is not a
base dependency, so an agent-only install can compute the distances but not the p-values).
Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from modelfleet.errors import InvalidInputError
from modelfleet.monitoring._sketch import Sketch
from modelfleet.monitoring.profile import FeatureProfile, NumericProfile, ReferenceProfile
from modelfleet.monitoring.profile_counts import FeatureCounts, ProfileWindow

__all__ = [
    "COMBINE_RULE",
    "DriftPolicy",
    "DriftReport",
    "DriftResult",
    "DriftTest",
    "FeatureDrift",
    "Verdict",
    "chi_square",
    "evaluate",
    "hellinger",
    "holm",
    "js_distance",
    "ks_sketches",
    "psi",
    "wasserstein_binned",
]

Floats = npt.NDArray[np.float64]

#: The combining rule, as reports state it.
COMBINE_RULE: Final = (
    "column drifts iff Holm-Bonferroni-adjusted chi-square p <= alpha and PSI >= "
    "psi_threshold; score = max PSI of drifting columns (0 if none)"
)

#: Above this effective n, KS p-values come from the asymptotic Kolmogorov distribution.
_KS_EXACT_MAX_N: Final = 10_000


class Verdict(StrEnum):
    DRIFT = "drift"
    NO_DRIFT = "no_drift"
    INSUFFICIENT_DATA = "insufficient_data"


class DriftTest(StrEnum):
    PSI = "psi"
    JS = "js"
    HELLINGER = "hellinger"
    WASSERSTEIN = "wasserstein"
    CHI_SQUARE = "chi_square"
    KS = "ks"


@dataclass(frozen=True)
class DriftPolicy:
    """Thresholds and the sample-size policy; every value lands in the results it decides.

    Attributes:
        min_count: rows a column needs in the window before any verdict (≥ 1).
        psi_threshold: PSI from which a column drifts (band "moderate").
        psi_major: PSI from which the band is "major".
        psi_epsilon: pseudo-count added to every bucket either side saw, before PSI.
        js_threshold: Jensen–Shannon distance (base 2) from which a column drifts.
        hellinger_threshold: Hellinger distance from which a column drifts.
        wasserstein_threshold: normalised W1 from which a column drifts.
        std_floor: smallest reference std W1 is divided by.
        p_threshold: p-value below which ``chi_square`` and ``ks`` say drift on their own.
        alpha: family-wise false-alarm rate of the combined verdict (Holm–Bonferroni).
    """

    min_count: int = 200
    psi_threshold: float = 0.1
    psi_major: float = 0.25
    psi_epsilon: float = 0.5
    js_threshold: float = 0.1
    hellinger_threshold: float = 0.1
    wasserstein_threshold: float = 0.1
    std_floor: float = 0.001
    p_threshold: float = 0.05
    alpha: float = 0.001

    def __post_init__(self) -> None:
        if self.min_count < 1:
            raise InvalidInputError("min_count must be at least 1")
        for name in (
            "psi_threshold",
            "psi_major",
            "js_threshold",
            "hellinger_threshold",
            "wasserstein_threshold",
            "std_floor",
            "psi_epsilon",
        ):
            if not getattr(self, name) > 0:
                raise InvalidInputError(f"{name} must be positive")
        if self.psi_major < self.psi_threshold:
            raise InvalidInputError("psi_major must be at least psi_threshold")
        for name in ("p_threshold", "alpha"):
            if not 0 < getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be between 0 and 1")


@dataclass(frozen=True)
class DriftResult:
    """One test on one column: the value, and everything needed to explain its verdict.

    Attributes:
        feature: the column's name.
        group: ``"inputs"`` or ``"outputs"``.
        test: the :class:`DriftTest`.
        value: the statistic (PSI, distance, χ² or KS D); None with insufficient data.
        threshold: the value (or, for p-value tests, the p) the verdict is decided at.
        verdict: drift, no_drift or insufficient_data.
        n: window rows the test read (non-missing ones for wasserstein and ks).
        n_reference: reference rows the test read.
        bins: buckets (or, for ks, split points) the value was computed over.
        epsilon: PSI's pseudo-count per bucket; for ks the rank-error bound subtracted
            from D; 0 elsewhere.
        p_value: for chi_square and ks.
        band: for psi: "insignificant", "moderate" or "major".
    """

    feature: str
    group: str
    test: DriftTest
    value: float | None
    threshold: float
    verdict: Verdict
    n: int
    n_reference: int
    bins: int = 0
    epsilon: float = 0.0
    p_value: float | None = None
    band: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["test"] = self.test.value
        out["verdict"] = self.verdict.value
        return out


@dataclass(frozen=True)
class FeatureDrift:
    """One column's part in the combined verdict.

    Attributes:
        feature, group: the column.
        verdict: drift when Holm-adjusted p ≤ alpha and PSI ≥ psi_threshold.
        p_value: its chi-square p-value (None with insufficient data).
        adjusted_p: Holm–Bonferroni-adjusted over the model's columns with enough rows.
        psi: its PSI.
        results: every test's result on it.
    """

    feature: str
    group: str
    verdict: Verdict
    p_value: float | None
    adjusted_p: float | None
    psi: float | None
    results: tuple[DriftResult, ...]

    def result(self, test: DriftTest) -> DriftResult | None:
        return next((r for r in self.results if r.test is test), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "group": self.group,
            "verdict": self.verdict.value,
            "p_value": self.p_value,
            "adjusted_p": self.adjusted_p,
            "psi": self.psi,
            "results": [r.to_dict() for r in self.results],
        }


@dataclass(frozen=True)
class DriftReport:
    """The combined drift of one model over one (possibly merged) window.

    Attributes:
        score: largest PSI among drifting columns, 0 when none drift; None with
            insufficient data.
        verdict: drift, no_drift or insufficient_data.
        band: PSI band of the score.
        rows: input rows of the window.
        drifted: ``group/name`` of the drifting columns, most drifting first.
        tested: columns with enough rows (the size of the Holm family).
        features: every column's :class:`FeatureDrift`, inputs then outputs.
        policy: the thresholds used.
    """

    score: float | None
    verdict: Verdict
    band: str | None
    rows: int
    drifted: tuple[str, ...]
    tested: int
    features: tuple[FeatureDrift, ...]
    policy: DriftPolicy

    def feature(self, name: str, group: str = "inputs") -> FeatureDrift:
        for f in self.features:
            if f.feature == name and f.group == group:
                return f
        raise InvalidInputError(f"no {group} column {name!r} in the report")

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "verdict": self.verdict.value,
            "band": self.band,
            "rows": self.rows,
            "drifted": list(self.drifted),
            "tested": self.tested,
            "rule": COMBINE_RULE,
            "policy": asdict(self.policy),
            "features": [f.to_dict() for f in self.features],
        }


# ---------------------------------------------------------------------------- statistics


def _shares(counts: Floats) -> Floats:
    total = counts.sum()
    return counts / total if total > 0 else counts


def psi(
    reference: Sequence[float] | Floats, current: Sequence[float] | Floats, epsilon: float = 0.5
) -> tuple[float, int]:
    """Population stability index of two count vectors over the same buckets.

    Buckets empty on both sides are left out (they carry no information, and smoothing
    them would add a bias that grows as the window shrinks); each remaining bucket gets
    ``epsilon`` pseudo-counts on both sides.

    Returns:
        (PSI, buckets used).
    """
    r, c = np.asarray(reference, np.float64), np.asarray(current, np.float64)
    keep = (r + c) > 0
    r, c = r[keep] + epsilon, c[keep] + epsilon
    p, q = r / r.sum(), c / c.sum()
    return float(((q - p) * np.log(q / p)).sum()), int(keep.sum())


def js_distance(reference: Sequence[float] | Floats, current: Sequence[float] | Floats) -> float:
    """Jensen–Shannon distance (square root of the divergence), base 2, in [0, 1]."""
    p = _shares(np.asarray(reference, np.float64))
    q = _shares(np.asarray(current, np.float64))
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum()
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum()
    return float(math.sqrt(max(0.0, (kl_p + kl_q) / 2)))


def hellinger(reference: Sequence[float] | Floats, current: Sequence[float] | Floats) -> float:
    """Hellinger distance √(1 − Σ √(p·q)), in [0, 1]."""
    p = _shares(np.asarray(reference, np.float64))
    q = _shares(np.asarray(current, np.float64))
    return float(math.sqrt(max(0.0, 1.0 - float(np.sqrt(p * q).sum()))))


def wasserstein_binned(
    edges: Sequence[float] | Floats,
    reference: Sequence[float] | Floats,
    current: Sequence[float] | Floats,
) -> float:
    """W1 between two histograms over ``le`` buckets of ``edges`` (not normalised).

    Each inner bucket's mass is spread uniformly between its edges; the underflow is put
    on the first edge and the overflow on the last (W1 of the clipped distributions: a
    lower bound on the shift beyond the reference range, which PSI sees in full).

    Args:
        edges: the E upper edges.
        reference, current: E + 1 bucket counts each (underflow … overflow).
    """
    e = np.asarray(edges, np.float64)
    fr = np.cumsum(_shares(np.asarray(reference, np.float64)))[:-1]  # F at each edge
    fc = np.cumsum(_shares(np.asarray(current, np.float64)))[:-1]
    d = fr - fc
    a, b, w = d[:-1], d[1:], np.diff(e)
    same = a * b >= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        crossing = np.where(
            np.abs(a) + np.abs(b) > 0, (a * a + b * b) / (2 * (np.abs(a) + np.abs(b))), 0.0
        )
    area = np.where(same, (np.abs(a) + np.abs(b)) / 2, crossing) * w
    return float(area.sum())


def chi_square(
    reference: Sequence[float] | Floats, current: Sequence[float] | Floats
) -> tuple[float, int]:
    """Homogeneity χ² of a 2 × B table (reference row, window row), no continuity correction.

    Buckets empty on both sides are dropped.

    Returns:
        (statistic, degrees of freedom); dof 0 when fewer than two buckets remain.
    """
    r, c = np.asarray(reference, np.float64), np.asarray(current, np.float64)
    keep = (r + c) > 0
    r, c = r[keep], c[keep]
    nr, nc = r.sum(), c.sum()
    if r.size < 2 or nr == 0 or nc == 0:
        return 0.0, 0
    col = r + c
    er, ec = col * nr / (nr + nc), col * nc / (nr + nc)
    stat = float(((r - er) ** 2 / er).sum() + ((c - ec) ** 2 / ec).sum())
    return stat, int(r.size - 1)


def ks_sketches(reference: Sketch, current: Sketch) -> tuple[float, float, int, float]:
    """Two-sample KS from two KLL sketches.

    D is the largest difference of the two sketches' CDFs (share ≤ x) over the union of
    the values they retain (exact when both sketches are still exact). It is then lowered
    by the sum of both sketches' rank-error bounds (DataSketches' normalised rank error,
    single-sided, the 99th percentile of the maximum rank error; 0 while exact), so sketch
    error alone does not make drift; the p-value is of that lowered D at
    n_eff = n·m / (n + m).

    Returns:
        (D, the error bound subtracted, split points, p-value).

    Raises:
        ModuleNotFoundError: SciPy is not installed.
    """
    from scipy import stats  # type: ignore[import-untyped]

    points = np.union1d(reference.items(), current.items())
    d = float(np.abs(reference.cdf(points) - current.cdf(points)).max()) if points.size else 0.0
    bound = reference.rank_error + current.rank_error
    n, m = reference.n, current.n
    n_eff = n * m / (n + m) if n and m else 0.0
    lowered = max(0.0, d - bound)
    if n_eff < 1:
        p = 1.0
    elif n_eff <= _KS_EXACT_MAX_N:
        p = float(stats.kstwo.sf(lowered, max(1, round(n_eff))))
    else:
        p = float(stats.kstwobign.sf(lowered * math.sqrt(n_eff)))
    return d, bound, int(points.size), min(1.0, max(0.0, p))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni-adjusted p-values (step-down, monotone, capped at 1)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


# ---------------------------------------------------------------------------- evaluation


def _band(value: float, policy: DriftPolicy) -> str:
    if value >= policy.psi_major:
        return "major"
    return "moderate" if value >= policy.psi_threshold else "insignificant"


def _verdict(drift: bool) -> Verdict:
    return Verdict.DRIFT if drift else Verdict.NO_DRIFT


@dataclass(frozen=True)
class _Column:
    results: list[DriftResult]
    psi: float | None
    chi2: tuple[float, int] | None  # statistic, dof (p filled in later, vectorised)
    n: int
    n_ref: int
    bins: int


def _pooled(f: NumericProfile, slots: Floats) -> Floats:
    """Numeric slots (under, inner…, over, missing) with under/overflow folded into their
    neighbours, for χ² (their reference count is 0 by construction)."""
    inner = slots[1:-2].copy()
    inner[0] += slots[0]
    inner[-1] += slots[-2]
    return np.append(inner, slots[-1])


def _column(f: FeatureProfile, counts: FeatureCounts, group: str, policy: DriftPolicy) -> _Column:
    ref = np.asarray((*f.counts, f.missing), np.float64)
    cur = np.append(counts.buckets, counts.missing).astype(np.float64)
    n, n_ref = counts.n, f.rows
    numeric = isinstance(f, NumericProfile)
    tests = [DriftTest.PSI, DriftTest.JS, DriftTest.HELLINGER]
    if numeric:
        tests.append(DriftTest.WASSERSTEIN)
    tests.append(DriftTest.CHI_SQUARE)
    thresholds = {
        DriftTest.PSI: policy.psi_threshold,
        DriftTest.JS: policy.js_threshold,
        DriftTest.HELLINGER: policy.hellinger_threshold,
        DriftTest.WASSERSTEIN: policy.wasserstein_threshold,
        DriftTest.CHI_SQUARE: policy.p_threshold,
        DriftTest.KS: policy.p_threshold,
    }

    def blank(test: DriftTest, n_read: int, n_ref_read: int) -> DriftResult:
        return DriftResult(
            f.name,
            group,
            test,
            None,
            thresholds[test],
            Verdict.INSUFFICIENT_DATA,
            n_read,
            n_ref_read,
        )

    results: list[DriftResult] = []
    if n < policy.min_count:
        results = [blank(t, n, n_ref) for t in tests]
        sk = counts.sketch
        if numeric and sk is not None:
            results.append(blank(DriftTest.KS, sk.n, f.rows - f.missing))
        return _Column(results, None, None, n, n_ref, int(((ref + cur) > 0).sum()))
    value, used = psi(ref, cur, policy.psi_epsilon)
    results.append(
        DriftResult(
            f.name,
            group,
            DriftTest.PSI,
            value,
            policy.psi_threshold,
            _verdict(value >= policy.psi_threshold),
            n,
            n_ref,
            used,
            policy.psi_epsilon,
            band=_band(value, policy),
        )
    )
    js = js_distance(ref, cur)
    results.append(
        DriftResult(
            f.name,
            group,
            DriftTest.JS,
            js,
            policy.js_threshold,
            _verdict(js >= policy.js_threshold),
            n,
            n_ref,
            used,
        )
    )
    hd = hellinger(ref, cur)
    results.append(
        DriftResult(
            f.name,
            group,
            DriftTest.HELLINGER,
            hd,
            policy.hellinger_threshold,
            _verdict(hd >= policy.hellinger_threshold),
            n,
            n_ref,
            used,
        )
    )
    pooled_ref, pooled_cur = ref, cur
    if isinstance(f, NumericProfile):
        present, present_ref = n - counts.missing, n_ref - f.missing
        if present < policy.min_count:
            results.append(blank(DriftTest.WASSERSTEIN, present, present_ref))
        else:
            w = wasserstein_binned(f.edges, ref[:-1], cur[:-1]) / max(f.std, policy.std_floor)
            results.append(
                DriftResult(
                    f.name,
                    group,
                    DriftTest.WASSERSTEIN,
                    w,
                    policy.wasserstein_threshold,
                    _verdict(w >= policy.wasserstein_threshold),
                    present,
                    present_ref,
                    f.buckets,
                )
            )
        pooled_ref, pooled_cur = _pooled(f, ref), _pooled(f, cur)
    chi2 = chi_square(pooled_ref, pooled_cur)
    results.append(
        DriftResult(
            f.name,
            group,
            DriftTest.CHI_SQUARE,
            chi2[0],
            policy.p_threshold,
            Verdict.NO_DRIFT,
            n,
            n_ref,
            chi2[1] + 1,
        )
    )
    if isinstance(f, NumericProfile) and counts.sketch is not None and f.sketch is not None:
        results.append(_ks(f, counts.sketch, group, policy))
    return _Column(results, value, chi2, n, n_ref, used)


def _ks(f: NumericProfile, sketch: Sketch, group: str, policy: DriftPolicy) -> DriftResult:
    reference = f.reference_sketch()
    assert reference is not None
    if sketch.n < policy.min_count:
        return DriftResult(
            f.name,
            group,
            DriftTest.KS,
            None,
            policy.p_threshold,
            Verdict.INSUFFICIENT_DATA,
            sketch.n,
            reference.n,
        )
    d, bound, points, p = ks_sketches(reference, sketch)
    return DriftResult(
        f.name,
        group,
        DriftTest.KS,
        d,
        policy.p_threshold,
        _verdict(p < policy.p_threshold),
        sketch.n,
        reference.n,
        points,
        bound,
        p,
    )


def evaluate(
    profile: ReferenceProfile, window: ProfileWindow, policy: DriftPolicy | None = None
) -> DriftReport:
    """Every test on every column of ``window``, and the model's combined verdict.

    Args:
        profile: the reference profile the window was counted against.
        window: one window or many merged (device, site or fleet).
        policy: thresholds and minimum counts (defaults: :class:`DriftPolicy`).

    Returns:
        The report; see the module docstring for the combining rule.

    Raises:
        InvalidInputError: the window was counted against another profile.
        ModuleNotFoundError: SciPy is not installed (p-values need it).
    """
    policy = policy or DriftPolicy()
    if window.digest != profile.digest:
        raise InvalidInputError("the window was counted against another reference profile")
    cols: list[tuple[str, FeatureProfile, _Column]] = []
    for group in ("inputs", "outputs"):
        for f, counts in window.columns(group):
            cols.append((group, f, _column(f, counts, group, policy)))
    tested = [i for i, (_, _, c) in enumerate(cols) if c.chi2 is not None]
    p_values: dict[int, float] = {}
    if tested:
        stats = np.array([cols[i][2].chi2[0] for i in tested])  # type: ignore[index]
        dofs = np.array([cols[i][2].chi2[1] for i in tested])  # type: ignore[index]
        from scipy import special

        ps = np.where(dofs > 0, special.chdtrc(np.maximum(dofs, 1), stats), 1.0)
        p_values = {i: float(p) for i, p in zip(tested, ps, strict=True)}
    adjusted = dict(zip(tested, holm([p_values[i] for i in tested]), strict=True))
    features: list[FeatureDrift] = []
    drifting: list[tuple[float, str]] = []
    for i, (group, f, c) in enumerate(cols):
        results = list(c.results)
        p = p_values.get(i)
        if p is None:
            verdict = Verdict.INSUFFICIENT_DATA
        else:
            for j, r in enumerate(results):
                if r.test is DriftTest.CHI_SQUARE:
                    results[j] = DriftResult(
                        r.feature,
                        r.group,
                        r.test,
                        r.value,
                        r.threshold,
                        _verdict(p < policy.p_threshold),
                        r.n,
                        r.n_reference,
                        r.bins,
                        p_value=p,
                    )
            assert c.psi is not None
            drift = adjusted[i] <= policy.alpha and c.psi >= policy.psi_threshold
            verdict = _verdict(drift)
            if drift:
                drifting.append((c.psi, f"{group}/{f.name}"))
        features.append(
            FeatureDrift(f.name, group, verdict, p, adjusted.get(i), c.psi, tuple(results))
        )
    drifting.sort(key=lambda t: (-t[0], t[1]))
    if not tested:
        score: float | None = None
        verdict = Verdict.INSUFFICIENT_DATA
    else:
        score = drifting[0][0] if drifting else 0.0
        verdict = _verdict(bool(drifting))
    return DriftReport(
        score=score,
        verdict=verdict,
        band=None if score is None else _band(score, policy),
        rows=window.rows,
        drifted=tuple(name for _, name in drifting),
        tested=len(tested),
        features=tuple(features),
        policy=policy,
    )
