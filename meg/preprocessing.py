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


class RecordError(ValueError):
    """A record cannot be turned into a model vector; `field` names the culprit."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


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

    `unknown_category`: "error" (default) rejects a category not seen in training;
    "zeros" encodes it as an all-zero one-hot block (documented fallback).
    """

    features: list[Feature]
    unknown_category: str = "error"

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
            unknown_category=d.get("unknown_category", "error"),
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
        """Records (feature name -> value) to model rows (N, output_dim) float32.

        Raises RecordError for a missing or unknown feature, a non-number where a number
        is expected, a non-finite number, or an unknown category (unless "zeros")."""
        known = {f.name for f in self.features}
        index = {f.name: {c: k for k, c in enumerate(f.categories)} for f in self.features}
        columns: dict[str, np.ndarray] = {
            f.name: np.zeros(len(records), dtype=np.float64 if f.kind == "numeric" else np.int64)
            for f in self.features}
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise RecordError(f"records[{i}] is not an object", f"records[{i}]")
            extra = set(rec) - known
            if extra:
                name = sorted(extra)[0]
                raise RecordError(f"unknown feature {name!r} in records[{i}]", f"records[{i}].{name}")
            for feat in self.features:
                where = f"records[{i}].{feat.name}"
                if feat.name not in rec:
                    raise RecordError(f"missing feature {feat.name!r} in records[{i}]", where)
                value = rec[feat.name]
                if feat.kind == "numeric":
                    if isinstance(value, bool) or not isinstance(value, int | float):
                        raise RecordError(f"{where} must be a number, got {value!r}", where)
                    if not np.isfinite(value):
                        raise RecordError(f"{where} must be finite", where)
                    columns[feat.name][i] = float(value)
                else:
                    key = category_key(value)
                    code = index[feat.name].get(key, UNSEEN)
                    if code == UNSEEN and self.unknown_category != "zeros":
                        shown = ", ".join(feat.categories[:10])
                        more = ", ..." if len(feat.categories) > 10 else ""
                        raise RecordError(f"unknown category {key!r} for {feat.name!r} "
                                          f"(known: {shown}{more})", where)
                    columns[feat.name][i] = code
        return self.encode_columns(columns)

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
