"""meg.preprocessing: records as real traffic sends them (unseen categories, every bad
value reported, integers beyond float range)."""

from __future__ import annotations

import numpy as np
import pytest

from meg.preprocessing import Feature, Preprocessing, RecordError


def _pre(policy: str = "zeros") -> Preprocessing:
    return Preprocessing([Feature("bytes", "numeric", offset=0.0, scale=0.001),
                          Feature("proto", "categorical", categories=["tcp", "udp"]),
                          Feature("flag", "categorical", categories=["0", "1"])], policy)


def test_unseen_categories_are_scored_and_reported() -> None:
    pre = _pre()
    enc = pre.encode_records([{"bytes": 500, "proto": "tcp", "flag": 1},
                              {"bytes": 500, "proto": "icmp", "flag": 7}])
    assert enc.unseen == [[], ["proto", "flag"]]
    np.testing.assert_array_equal(enc.x, [[0.5, 1, 0, 0, 1], [0.5, 0, 0, 0, 0]])
    np.testing.assert_array_equal(pre.transform_records([{"bytes": 0, "proto": "udp",
                                                          "flag": True}]), [[0, 0, 1, 0, 1]])


def test_strict_policy_per_bundle_or_per_call() -> None:
    rec = {"bytes": 1, "proto": "icmp", "flag": 0}
    with pytest.raises(RecordError, match="unknown category 'icmp'"):
        _pre("error").encode_records([rec])
    with pytest.raises(RecordError, match="unknown category 'icmp'"):
        _pre("zeros").encode_records([rec], unknown_category="error")
    assert _pre("error").encode_records([rec], unknown_category="zeros").unseen == [["proto"]]
    with pytest.raises(ValueError, match="unknown_category"):
        _pre("zeros").encode_records([rec], unknown_category="ignore")
    with pytest.raises(ValueError, match="unknown_category"):
        _pre("sometimes")


def test_every_bad_record_is_listed() -> None:
    records = [
        {"bytes": 1, "proto": "tcp", "flag": 0},
        {"bytes": "x", "proto": "tcp", "flag": 0},
        {"proto": "tcp", "flag": 0, "colour": "red"},
        "not an object",
        {"bytes": 2, "proto": None, "flag": [1]},
    ]
    with pytest.raises(RecordError) as e:
        _pre().encode_records(records)
    got = [(p.index, p.field) for p in e.value.problems]
    assert got == [(1, "records[1].bytes"), (2, "records[2].colour"), (2, "records[2].bytes"),
                   (3, "records[3]"), (4, "records[4].proto"), (4, "records[4].flag")]
    assert e.value.field == "records[1].bytes" and "and 5 more problems" in str(e.value)


@pytest.mark.parametrize("value, reason", [
    (10**400, "beyond float64"),  # JSON integers are unbounded in Python
    (-(10**400), "beyond float64"),
    (2**64 * 10**300, "beyond float64"),
    (1e300, "beyond float32 after scaling"),
    (float("inf"), "must be finite"),
    (float("nan"), "must be finite"),
])
def test_numbers_beyond_range_are_record_errors(value: object, reason: str) -> None:
    with pytest.raises(RecordError, match=reason):
        _pre().encode_records([{"bytes": value, "proto": "tcp", "flag": 0}])


def test_large_integers_within_range_are_fine() -> None:
    x = _pre().transform_records([{"bytes": 2**64, "proto": "tcp", "flag": 0}])
    assert x[0, 0] == pytest.approx(2**64 * 0.001)
