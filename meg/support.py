"""A score that also measures support: the distance from a row to the nearest distinct
training row, alone or combined with the energy. Numpy only, so training, the
benchmarks and the service share one definition.

Why: MEG's energy models density. Where the data has rare but legitimate kinds of rows
(KDD's rare attack types), the energy of those rows can sit at the level of rows never
seen in training; the nearest-neighbour distance asks instead whether a row has close
training rows at all (support). The two disagree exactly where one of them is wrong.

Score variants (`VARIANTS`; every score: higher = more anomalous):

- ``energy``: E(x), as before.
- ``knn``: Euclidean distance to the nearest row of the reference set (the training
  rows, deduplicated, capped at `REFERENCE_CAP` rows by a seeded subsample), exact brute
  force in chunks.
- ``energy+knn``: each component turned into its surprise −log p against the
  component's scores on the TRAINING rows (p: the conformal-style tail share
  (1 + #{fit ≥ s}) / (n + 1)), summed with the energy weighted by its rank agreement
  with the distance over the training rows (`agreement_weight`, in [0, 1]; 1 is
  Fisher's combination, up to a factor 2). Scale free, so neither component needs a
  unit. Beyond the largest fitted score the p-value
  keeps falling along an exponential tail fitted to the upper tail (`TailECDF`), so rows
  beyond every fitted row stay ordered instead of tying at p = 1/(n + 1).

Why the component ECDFs are fitted on training rows (`fit_support`), not on held-out
ones: split-conformal p-values of the combined score are exact when the score function
does not depend on the calibration rows. Fitting the ECDFs on the training rows (each
row's energy, and its leave-one-out distance to the nearest OTHER training row,
`training_distances`) leaves every held-out row to calibrate the final score. The
training rows are slightly optimistic (the energy saw them; a row's neighbours number
n − 1), which can only change the combination's power, never the validity of its
p-values: that rests on the calibration rows alone (docs/bundle.md, support).
Bundles written before (`SupportSpec.ecdf_rows == "held-out half"`) fitted the ECDFs on
one half of the held-out rows and calibrated on the other; still valid, still loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

VARIANTS = ("energy", "knn", "energy+knn")
# The score a bundle serves by default, chosen by measurement (docs/benchmarks.md, the
# ADBench section's "Choice of the default score"; bench/adbench.py, bench/kdd.py):
# energy+knn has the best mean rank against the peers over ADBench and KDD together
# (ADBench mean AUROC 0.8773, rank 2.12 against PyOD KNN's 0.8734 and 2.29; KDD F1
# 0.9818). knn has the higher ADBench mean AUROC, and stays selectable per request.
DEFAULT_SCORE = "energy+knn"
# 10k rather than 20k: scoring 1,000 unseen 121-wide rows then stays within 2x the
# energy's /anomaly time on one core (bench/support_cost.py), at a small cost on KDD.
REFERENCE_CAP = 10_000
TAIL_SHARE = 0.1  # share of calibration scores whose mean excess sets the tail scale
TAIL_MIN = 5  # ... and at least this many
# Training rows (a seeded subsample) the component ECDFs are fitted on: enough for tail
# shares of 1e-4, and the leave-one-out search stays a few seconds on 121-wide rows.
FIT_ROWS = 10_000
_CHUNK = 1024  # query rows per distance block: (chunk, R) float32 is 40 MB at R = 10k


def check_variant(name: str) -> str:
    """`name` when it is a known score variant; ValueError naming the known ones."""
    if name not in VARIANTS:
        raise ValueError(f"unknown score {name!r}; choose one of {', '.join(VARIANTS)}")
    return name


def reference_rows(train: np.ndarray, cap: int = REFERENCE_CAP, seed: int = 0) -> np.ndarray:
    """The reference set: `train`'s distinct rows, at most `cap` of them (a seeded
    uniform subsample, kept in sorted row order), as C-contiguous float32 (R, D)."""
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    rows = np.unique(np.asarray(train, dtype=np.float32), axis=0)  # (U, D), sorted
    if len(rows) > cap:
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), cap, replace=False))
        rows = rows[keep]
    return np.ascontiguousarray(rows, dtype=np.float32)


def nearest_distance(reference: np.ndarray, queries: np.ndarray, k: int = 1,
                     chunk: int = _CHUNK) -> np.ndarray:
    """Exact Euclidean distance (float64, (Q,)) from each query row to its k-th nearest
    reference row, by brute force in chunks of `chunk` queries.

    Candidates come from float32 ‖q‖² − 2 q·r + ‖r‖² (one matmul a chunk); the k nearest
    candidates' distances are then recomputed in float64 from the differences, so exact
    duplicates get 0 rather than float32 cancellation noise."""
    ref = np.ascontiguousarray(reference, dtype=np.float32)  # (R, D)
    q_all = np.asarray(queries, dtype=np.float32)  # (Q, D)
    if ref.ndim != 2 or q_all.ndim != 2 or ref.shape[1] != q_all.shape[1]:
        raise ValueError(f"reference {ref.shape} and queries {q_all.shape} need matching 2-D shapes")
    if not 1 <= k <= len(ref):
        raise ValueError(f"k must be in [1, {len(ref)}], got {k}")
    ref_sq = np.einsum("ij,ij->i", ref, ref)  # (R,)
    neg2_ref_t = np.ascontiguousarray(-2.0 * ref.T)  # (D, R)
    out = np.empty(len(q_all), dtype=np.float64)
    buf = np.empty((min(chunk, len(q_all)), len(ref)), dtype=np.float32)
    for start in range(0, len(q_all), chunk):
        q = q_all[start : start + chunk]  # (B, D)
        # ‖r‖² − 2 q·r in one reused buffer (‖q‖² is the same for a row, so omitted)
        d2 = np.matmul(q, neg2_ref_t, out=buf[: len(q)])  # (B, R)
        d2 += ref_sq
        if k == 1:
            cand = np.argmin(d2, axis=1)[:, None]  # (B, 1)
        else:
            cand = np.argpartition(d2, k - 1, axis=1)[:, :k]  # (B, k), unordered
        diff = q[:, None, :].astype(np.float64) - ref[cand].astype(np.float64)  # (B, k, D)
        exact = np.sqrt(np.einsum("bkd,bkd->bk", diff, diff))  # (B, k)
        out[start : start + len(q)] = exact.max(axis=1) if k > 1 else exact[:, 0]
    return out


@dataclass
class TailECDF:
    """Conformal surprise −log p of scores against calibration scores, with an
    exponential tail beyond the largest one.

    p(s) = (1 + #{cal ≥ s}) / (n + 1) up to max(cal); beyond it
    p(s) = exp(−(s − max) / tail_scale) / (n + 1), `tail_scale` the mean excess of the
    top `TAIL_SHARE` (at least `TAIL_MIN`) calibration scores over the next one down (an
    exponential peaks-over-threshold fit), falling back to the scores' standard
    deviation, then 1, where that is 0."""

    sorted_scores: np.ndarray  # (n,) float64, ascending
    tail_scale: float

    @classmethod
    def from_scores(cls, scores: np.ndarray) -> TailECDF:
        s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
        if len(s) == 0 or not np.isfinite(s).all():
            raise ValueError("calibration scores must be a non-empty array of finite numbers")
        m = min(len(s) - 1, max(TAIL_MIN, int(np.ceil(TAIL_SHARE * len(s)))))
        scale = float(np.mean(s[len(s) - m :] - s[len(s) - m - 1])) if m > 0 else 0.0
        if not scale > 0.0:
            scale = float(np.std(s))
        if not scale > 0.0:
            scale = 1.0
        return cls(s, scale)

    @property
    def n(self) -> int:
        return int(len(self.sorted_scores))

    def surprise(self, scores: np.ndarray) -> np.ndarray:
        """−log p of each score (float64, same shape); non-decreasing in the score."""
        x = np.asarray(scores, dtype=np.float64)
        s, n = self.sorted_scores, self.n
        at_least = n - np.searchsorted(s, x, side="left")  # #{cal >= x}
        inside = -np.log((1.0 + at_least) / (n + 1.0))
        beyond = np.log(n + 1.0) + (x - s[-1]) / self.tail_scale
        return np.where(x > s[-1], beyond, inside)


@dataclass
class SupportModel:
    """What the support variants need at scoring time: the reference rows, both
    components' ECDFs (fitted on the training rows: `fit_support`) and the energy's
    weight in the combination (`energy_weight`; the distance's is 1)."""

    reference: np.ndarray  # (R, D) float32
    energy_ecdf: TailECDF
    knn_ecdf: TailECDF
    k: int = 1
    energy_weight: float = 1.0
    # the reference rows' bytes: a row equal to one of them is at distance 0 (k = 1)
    # without the search; common in tabular data, where rows repeat
    _keys: set[bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.reference = np.ascontiguousarray(self.reference, dtype=np.float32)
        self._keys = {row.tobytes() for row in self.reference} if self.k == 1 else set()

    def distance(self, x: np.ndarray) -> np.ndarray:
        """The ``knn`` score of model-space rows `x` (B, D): exact, searching only the
        rows that are not themselves reference rows."""
        q = np.ascontiguousarray(x, dtype=np.float32)
        if self.k != 1 or q.ndim != 2:
            return nearest_distance(self.reference, q, k=self.k)
        seen = np.fromiter((row.tobytes() in self._keys for row in q), dtype=bool,
                           count=len(q))
        out = np.zeros(len(q), dtype=np.float64)
        if not seen.all():
            out[~seen] = nearest_distance(self.reference, q[~seen], k=1)
        return out

    def combine(self, energy: np.ndarray, distance: np.ndarray) -> np.ndarray:
        """The ``energy+knn`` score from both components' raw scores: the weighted sum
        of their surprises."""
        return (self.energy_weight * self.energy_ecdf.surprise(energy)
                + self.knn_ecdf.surprise(distance))

    def score(self, variant: str, energy: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The `variant` score (float64, (B,)) of rows `x` whose energies are `energy`;
        the distance search runs only for the variants that use it."""
        check_variant(variant)
        if variant == "energy":
            return np.asarray(energy, dtype=np.float64)
        distance = self.distance(x)
        return distance if variant == "knn" else self.combine(energy, distance)


def training_distances(train: np.ndarray, reference: np.ndarray, k: int = 1,
                       rows: np.ndarray | None = None) -> np.ndarray:
    """The ``knn`` score each training row would get as a new row scored against the
    OTHER training rows (leave one out), float64 (len(rows),); `rows`: positions into
    `train` (default: all).

    `reference` holds `train`'s distinct rows (`reference_rows`, possibly capped). A
    row whose value occurs more than once in `train` keeps that value among the others,
    so its k-th nearest distinct row is the reference's k-th nearest (itself first, at
    0); a row occurring once that is itself a reference row loses it, so its score is
    the reference's (k+1)-th nearest; a row left out of a capped reference is scored
    like any new row."""
    x = np.asarray(train, dtype=np.float32)
    pos = np.arange(len(x)) if rows is None else np.asarray(rows, dtype=np.int64)
    ref = np.ascontiguousarray(reference, dtype=np.float32)
    _, inverse, counts = np.unique(x, axis=0, return_inverse=True, return_counts=True)
    once = counts[np.asarray(inverse).reshape(-1)[pos]] == 1
    keys = {r.tobytes() for r in ref}
    q = np.ascontiguousarray(x[pos])
    in_ref = np.fromiter((r.tobytes() in keys for r in q), dtype=bool, count=len(q))
    alone = once & in_ref  # its own value leaves the reference when it is left out
    out = np.empty(len(q), dtype=np.float64)
    if alone.any():
        if len(ref) < k + 1:
            raise ValueError(f"need at least {k + 1} distinct training rows for a "
                             f"leave-one-out distance, got {len(ref)}")
        out[alone] = nearest_distance(ref, q[alone], k=k + 1)
    if (~alone).any():
        out[~alone] = nearest_distance(ref, q[~alone], k=k)
    return out


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of `x`, tied values sharing their mean rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # the last rank of each distinct value
    return ((ends - (counts - 1) / 2.0)[np.asarray(inverse).reshape(-1)]).astype(np.float64)


def agreement_weight(energy: np.ndarray, distance: np.ndarray) -> float:
    """The energy's weight in the combination: Spearman's rank correlation between
    `energy` and `distance` (`fit_support` passes the distinct training rows' energies
    and leave-one-out distances), clipped to [0, 1]; 1 (Fisher's equal weights) when
    either is constant, so that it is undefined.

    Why (label-free, from training rows only): both components estimate how typical a
    row is, the energy as a learned density, the distance as a nonparametric one that
    asks only about support. Where the energy orders the training rows the way the
    distance does, its finer density information is corroborated and counts fully;
    where the two orderings disagree, nothing says the energy's is the right one, and
    it counts in proportion to the agreement."""
    e = np.asarray(energy, dtype=np.float64).reshape(-1)
    d = np.asarray(distance, dtype=np.float64).reshape(-1)
    if len(e) != len(d):
        raise ValueError(f"{len(e)} energies but {len(d)} distances")
    re, rd = _average_ranks(e), _average_ranks(d)
    re -= re.mean()
    rd -= rd.mean()
    denom = float(np.sqrt((re * re).sum() * (rd * rd).sum()))
    if not denom > 0.0:
        return 1.0
    return float(np.clip((re * rd).sum() / denom, 0.0, 1.0))


def fit_rows(n: int, cap: int = FIT_ROWS, seed: int = 0) -> np.ndarray:
    """Positions of the training rows the component ECDFs are fitted on: all n, or a
    seeded uniform subsample of `cap` of them (sorted)."""
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))


def fit_support(train: np.ndarray, energy_fn: Callable[[np.ndarray], np.ndarray],
                cap: int = REFERENCE_CAP, k: int = 1, seed: int = 0,
                max_fit_rows: int = FIT_ROWS) -> SupportModel:
    """A SupportModel from the training rows alone: the reference set from `train` (the
    rows the model was trained on), and the ECDFs of energy and leave-one-out distance
    (`training_distances`) on at most `max_fit_rows` of them (a seeded subsample), and
    the energy's weight in the combination (`agreement_weight`) on at most as many of
    the DISTINCT training rows: like the reference set, one vote per distinct row, so a
    value repeated thousands of times (KDD's flood connections) cannot decide alone how
    far the two scores agree.
    `energy_fn` maps rows (B, D) to energies (B,).

    Nothing here reads a held-out row, so every held-out row can calibrate the
    combined score's p-values (the module docstring says why that is exact)."""
    x = np.asarray(train, dtype=np.float32)
    ref = reference_rows(x, cap=cap, seed=seed)
    pos = fit_rows(len(x), max_fit_rows, seed)
    fit_x = np.ascontiguousarray(x[pos])
    fit_e = np.asarray(energy_fn(fit_x), dtype=np.float64).reshape(-1)
    if len(fit_e) != len(fit_x):
        raise ValueError(f"energy_fn gave {len(fit_e)} energies for {len(fit_x)} rows")
    fit_d = training_distances(x, ref, k=k, rows=pos)
    distinct = np.unique(x, axis=0)  # sorted; reference_rows draws its subsample from these
    upos = fit_rows(len(distinct), max_fit_rows, seed)
    if len(distinct) == len(x):  # no duplicates: the fit rows are distinct rows already
        weight = agreement_weight(fit_e, fit_d)
    else:
        u_e = np.asarray(energy_fn(np.ascontiguousarray(distinct[upos])), np.float64).reshape(-1)
        weight = agreement_weight(u_e, training_distances(distinct, ref, k=k, rows=upos))
    return SupportModel(ref, TailECDF.from_scores(fit_e), TailECDF.from_scores(fit_d), k=k,
                        energy_weight=weight)


# --------------------------------------------------------------------------- bundle


REFERENCE_FILE = "support_reference.npy"


# SupportSpec.ecdf_rows: which rows fitted the component ECDFs.
ECDF_TRAINING = "training"  # since this format: training rows; every held-out row calibrates
ECDF_HELD_OUT_HALF = "held-out half"  # bundles written before: half the held-out rows


@dataclass
class SupportSpec:
    """The manifest's `support` entry: the reference file's name, k, both components'
    ECDFs (sorted scores and tail scale) and the rows they were fitted on (`ecdf_rows`),
    the energy's weight in the combination, each support variant's calibration scores
    (sorted: the conformal reference of its p-values, from held-out rows the ECDFs never
    read) and the bundle's default score.

    Entries without `ecdf_rows` come from bundles written before it: their ECDFs were
    fitted on one half of the held-out rows and their calibration scores come from the
    other half. Their p-values are just as valid (the halves are disjoint), so they load
    unchanged; re-exporting calibrates on twice the rows."""

    reference: str
    k: int
    energy_ecdf: list[float]
    energy_tail: float
    knn_ecdf: list[float]
    knn_tail: float
    calibration: dict[str, list[float]]  # variant ("knn", "energy+knn") -> sorted scores
    default_score: str = "energy"
    ecdf_rows: str = ECDF_HELD_OUT_HALF
    energy_weight: float = 1.0

    def __post_init__(self) -> None:
        check_variant(self.default_score)
        if self.ecdf_rows not in (ECDF_TRAINING, ECDF_HELD_OUT_HALF):
            raise ValueError(f"support.ecdf_rows {self.ecdf_rows!r} is not one of "
                             f"{ECDF_TRAINING!r}, {ECDF_HELD_OUT_HALF!r}")
        if not (np.isfinite(self.energy_weight) and self.energy_weight >= 0.0):
            raise ValueError(f"support.energy_weight must be finite and >= 0, got "
                             f"{self.energy_weight}")
        if Path(self.reference).name != self.reference or not self.reference.endswith(".npy"):
            raise ValueError(f"support.reference {self.reference!r} must be a plain .npy file name")
        if self.k < 1:
            raise ValueError(f"support.k must be >= 1, got {self.k}")
        for name in self.calibration:
            if name == "energy":
                raise ValueError("support.calibration holds the support variants only")
            check_variant(name)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SupportSpec:
        return cls(reference=str(d["reference"]), k=int(d["k"]),
                   energy_ecdf=[float(v) for v in d["energy_ecdf"]],
                   energy_tail=float(d["energy_tail"]),
                   knn_ecdf=[float(v) for v in d["knn_ecdf"]], knn_tail=float(d["knn_tail"]),
                   calibration={str(k): [float(x) for x in v]
                                for k, v in dict(d["calibration"]).items()},
                   default_score=str(d.get("default_score", "energy")),
                   ecdf_rows=str(d.get("ecdf_rows", ECDF_HELD_OUT_HALF)),
                   energy_weight=float(d.get("energy_weight", 1.0)))

    @property
    def calibration_source(self) -> str:
        """Where the support scores' calibration rows came from, in words."""
        if self.ecdf_rows == ECDF_TRAINING:
            return ("every held-out calibration row (the combination's ECDFs are fitted on "
                    "the training rows)")
        return ("the second half of the held-out calibration rows (the first half fits "
                "the support ECDFs)")

    def model(self, reference: np.ndarray) -> SupportModel:
        """The SupportModel of this spec around the loaded reference rows."""
        return SupportModel(reference,
                            TailECDF(np.asarray(self.energy_ecdf, np.float64), self.energy_tail),
                            TailECDF(np.asarray(self.knn_ecdf, np.float64), self.knn_tail),
                            k=self.k, energy_weight=self.energy_weight)


def save_reference(path: Path, reference: np.ndarray) -> None:
    """Write reference rows as a plain float32 .npy (no pickled objects)."""
    np.save(path, np.ascontiguousarray(reference, dtype=np.float32), allow_pickle=False)


def load_reference(path: Path, dim: int) -> np.ndarray:
    """Read a reference .npy written by `save_reference` without ever unpickling
    (allow_pickle=False); ValueError unless it is a non-empty finite float32 (R, dim)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path.name}: not a plain .npy array (pickled objects are never "
                         f"loaded): {e}") from e
    if arr.dtype != np.float32 or arr.ndim != 2 or arr.shape[1] != dim or len(arr) == 0:
        raise ValueError(f"{path.name}: expected float32 rows of {dim} columns, got "
                         f"{arr.dtype} {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{path.name}: non-finite values")
    return np.ascontiguousarray(arr)


def build_spec(train: np.ndarray, held_out: np.ndarray,
               energy_fn: Callable[[np.ndarray], np.ndarray], default_score: str = "energy",
               cap: int = REFERENCE_CAP, k: int = 1,
               seed: int = 0) -> tuple[SupportSpec, np.ndarray]:
    """Everything a bundle needs for the support variants: the spec and the reference
    rows. The reference and the combination's ECDFs come from `train` alone
    (`fit_support`); EVERY row of `held_out` (normal rows never trained on) gives each
    support variant's calibration scores. `energy_fn` maps rows (B, D) to energies (B,)."""
    if len(held_out) < 1:
        raise ValueError("need at least one held-out row to calibrate")
    model = fit_support(train, energy_fn, cap=cap, k=k, seed=seed)
    cal_e = np.asarray(energy_fn(held_out), np.float64).reshape(-1)
    cal_d = model.distance(held_out)
    calibration = {"knn": np.sort(cal_d).tolist(),
                   "energy+knn": np.sort(model.combine(cal_e, cal_d)).tolist()}
    spec = SupportSpec(REFERENCE_FILE, k, model.energy_ecdf.sorted_scores.tolist(),
                       model.energy_ecdf.tail_scale, model.knn_ecdf.sorted_scores.tolist(),
                       model.knn_ecdf.tail_scale, calibration, check_variant(default_score),
                       ecdf_rows=ECDF_TRAINING, energy_weight=model.energy_weight)
    return spec, model.reference
