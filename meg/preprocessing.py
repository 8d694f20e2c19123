"""Records (named raw features) to model rows and back: the one implementation that
training (fitting and encoding whole columns) and the service (encoding JSON records,
decoding samples) share. Its JSON form is part of the bundle manifest (docs/bundle.md).

Numeric features are min-max scaled, x' = (x - offset) * scale, in float64 and then
stored as float32; categorical features are one-hot blocks over `categories` (strings
from `category_key`, so 1, 1.0 and "1" are one category).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

UNSEEN = -1  # category code of a value training never saw: an all-zero one-hot block
UNKNOWN_CATEGORY_POLICIES = ("zeros", "error")
_F32_MAX = float(np.finfo(np.float32).max)


@dataclass
class Feature:
    """One input column. Numeric: x' = (x - offset) * scale. Categorical: one-hot over
    `categories` (strings), columns named ``name=category``."""

    name: str
    kind: str  # "numeric" | "categorical"
    offset: float = 0.0
    scale: float = 1.0
    categories: list[str] = field(default_factory=list)

    @property
    def width(self) -> int:
        return len(self.categories) if self.kind == "categorical" else 1

    def column_names(self) -> list[str]:
        if self.kind == "categorical":
            return [f"{self.name}={c}" for c in self.categories]
        return [self.name]


@dataclass(frozen=True)
class RecordProblem:
    """One reason one record cannot be encoded: `index` into the records, `field` the
    dotted path (``records[3].service``), `reason` for people."""

    index: int
    field: str
    reason: str


class RecordError(ValueError):
    """Records cannot be turned into model rows. `problems` lists every bad value of every
    record (not only the first); `field` and the message describe the first."""

    def __init__(self, message: str, field: str | None = None,
                 problems: list[RecordProblem] | None = None):
        super().__init__(message)
        self.field = field
        self.problems = problems or []

    @classmethod
    def of(cls, problems: list[RecordProblem]) -> RecordError:
        first = problems[0]
        more = len(problems) - 1
        tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        return cls(first.reason + tail, first.field, problems)


@dataclass
class EncodedRecords:
    """Records as model rows, and which categorical features of each record held a
    category training never saw (encoded as an all-zero block)."""

    x: np.ndarray  # (N, output_dim) float32
    unseen: list[list[str]]  # per record: feature names with an unseen category


def category_key(value: Any) -> str:
    """Canonical string for a category value: 1, 1.0 and "1" are the same category."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass
class Preprocessing:
    """Plain-JSON description of how records (named features) become model rows.

    `unknown_category`: "zeros" (default) encodes a category not seen in training as an
    all-zero one-hot block and reports it (`EncodedRecords.unseen`); "error" rejects it.
    """

    features: list[Feature]
    unknown_category: str = "zeros"

    def __post_init__(self) -> None:
        if self.unknown_category not in UNKNOWN_CATEGORY_POLICIES:
            raise ValueError(f"unknown_category must be one of {UNKNOWN_CATEGORY_POLICIES}, "
                             f"got {self.unknown_category!r}")

    @property
    def output_dim(self) -> int:
        return sum(f.width for f in self.features)

    def column_names(self) -> list[str]:
        return [c for f in self.features for c in f.column_names()]

    def to_json(self) -> dict[str, Any]:
        return {"unknown_category": self.unknown_category,
                "features": [asdict(f) for f in self.features]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(
            features=[Feature(**f) for f in d["features"]],
            unknown_category=d.get("unknown_category", "zeros"),
        )

    def encode_columns(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """Whole columns to model rows (N, output_dim) float32: the single place where
        scaling and one-hot encoding happen. `columns[name]` holds float64 values for a
        numeric feature and integer codes into `categories` for a categorical one
        (UNSEEN, -1, leaves the block all zero)."""
        n = len(next(iter(columns.values()))) if columns else 0
        out = np.zeros((n, self.output_dim), dtype=np.float32)
        col = 0
        for feat in self.features:
            values = np.asarray(columns[feat.name])
            if feat.kind == "numeric":
                out[:, col] = (values.astype(np.float64) - feat.offset) * feat.scale
            else:
                seen = values != UNSEEN
                out[np.flatnonzero(seen), col + values[seen].astype(np.int64)] = 1.0
            col += feat.width
        return out

    def transform_records(self, records: list[dict[str, Any]]) -> np.ndarray:
        """Records (feature name -> value) to model rows (N, output_dim) float32, under
        the bundle's unknown-category policy. Raises RecordError (see encode_records)."""
        return self.encode_records(records).x

    def encode_records(self, records: list[Any], unknown_category: str | None = None
                       ) -> EncodedRecords:
        """Records (feature name -> value) to model rows, noting unseen categories.

        `unknown_category` ("zeros" | "error", default the bundle's) decides what a
        category training never saw does. Raises RecordError listing every problem of
        every record: not an object, a missing or unknown feature, a non-number where a
        number is expected, a number beyond float range (JSON integers are unbounded) or
        whose scaled value leaves the float32 range, a non-scalar category, or (policy
        "error") an unknown category."""
        policy = self.unknown_category if unknown_category is None else unknown_category
        if policy not in UNKNOWN_CATEGORY_POLICIES:
            raise ValueError(f"unknown_category must be one of {UNKNOWN_CATEGORY_POLICIES}, "
                             f"got {policy!r}")
        known = {f.name for f in self.features}
        index = {f.name: {c: k for k, c in enumerate(f.categories)} for f in self.features}
        columns: dict[str, np.ndarray] = {
            f.name: np.zeros(len(records), dtype=np.float64 if f.kind == "numeric" else np.int64)
            for f in self.features}
        problems: list[RecordProblem] = []
        unseen: list[list[str]] = [[] for _ in records]
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                problems.append(RecordProblem(i, f"records[{i}]", f"records[{i}] is not an object"))
                continue
            for name in sorted(set(rec) - known):
                problems.append(RecordProblem(i, f"records[{i}].{name}",
                                              f"unknown feature {name!r} in records[{i}]"))
            for feat in self.features:
                where = f"records[{i}].{feat.name}"
                if feat.name not in rec:
                    problems.append(RecordProblem(
                        i, where, f"missing feature {feat.name!r} in records[{i}]"))
                    continue
                value = rec[feat.name]
                if feat.kind == "numeric":
                    reason = _numeric_problem(value, feat, where)
                    if reason:
                        problems.append(RecordProblem(i, where, reason))
                    else:
                        columns[feat.name][i] = float(value)
                    continue
                if value is None or isinstance(value, dict | list):
                    problems.append(RecordProblem(
                        i, where, f"{where} must be a string, number or boolean, got {value!r}"))
                    continue
                key = category_key(value)
                code = index[feat.name].get(key, UNSEEN)
                if code == UNSEEN:
                    if policy == "error":
                        shown = ", ".join(feat.categories[:10])
                        more = ", ..." if len(feat.categories) > 10 else ""
                        problems.append(RecordProblem(
                            i, where, f"unknown category {key!r} for {feat.name!r} "
                            f"(known: {shown}{more})"))
                    unseen[i].append(feat.name)
                columns[feat.name][i] = code
        if problems:
            raise RecordError.of(problems)
        return EncodedRecords(self.encode_columns(columns), unseen)

    def decode_rows(self, rows: np.ndarray) -> list[dict[str, Any]]:
        """Model-space rows back to raw records: numeric columns un-scaled, categorical
        features as the argmax of their one-hot block (the inverse of encode_columns)."""
        out: list[dict[str, Any]] = [{} for _ in range(len(rows))]
        col = 0
        for feat in self.features:
            if feat.kind == "numeric":
                scale = feat.scale if feat.scale else 1.0
                values = rows[:, col].astype(np.float64) / scale + feat.offset
                for rec, v in zip(out, values, strict=True):
                    rec[feat.name] = float(v)
            else:
                idx = rows[:, col:col + feat.width].argmax(axis=1)
                for rec, k in zip(out, idx, strict=True):
                    rec[feat.name] = feat.categories[int(k)]
            col += feat.width
        return out


def _numeric_problem(value: Any, feat: Feature, where: str) -> str | None:
    """Why `value` cannot be numeric feature `feat`'s value, or None when it can."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{where} must be a number, got {value!r}"
    try:
        x = float(value)  # a JSON integer beyond float range raises OverflowError
    except OverflowError:
        return f"{where} is out of range (beyond float64)"
    if not np.isfinite(x):
        return f"{where} must be finite"
    if abs((x - feat.offset) * feat.scale) > _F32_MAX:
        return f"{where} is out of range (beyond float32 after scaling)"
    return None
