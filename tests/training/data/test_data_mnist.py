"""IDX reading and the MNIST held-out-digit dataset."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from training.data.files import DataError
from training.data.mnist import load_mnist_dataset, read_idx

REAL_DATA = Path(os.environ.get("MEG_DATA_DIR", "data"))
T10K = ("mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz")


def _need_real():
    for rel in T10K:
        if not (REAL_DATA / rel).is_file():
            pytest.skip(f"{rel} not under MEG_DATA_DIR (set MEG_DATA_DIR=/work/shared/data)")


def _idx_bytes(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def test_read_idx_roundtrip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    gz, plain = tmp_path / "a.gz", tmp_path / "a.idx"
    gz.write_bytes(gzip.compress(_idx_bytes(arr)))
    plain.write_bytes(_idx_bytes(arr))
    np.testing.assert_array_equal(read_idx(gz), arr)
    np.testing.assert_array_equal(read_idx(plain), arr)
    ints = np.array([1, -2, 300], dtype=">i4")
    p = tmp_path / "i.idx"
    p.write_bytes(bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 3) + ints.tobytes())
    out = read_idx(p)
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, [1, -2, 300])


def test_read_idx_errors(tmp_path):
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"\x12\x34\x08\x01" + b"\x00" * 8))
    with pytest.raises(DataError, match="magic number 12340801") as e:
        read_idx(bad)
    assert "bad.gz" in str(e.value)
    short = tmp_path / "short.gz"
    arr = np.zeros((4, 5), np.uint8)
    short.write_bytes(gzip.compress(_idx_bytes(arr)[:-3]))
    with pytest.raises(DataError, match="needs 20"):
        read_idx(short)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(_idx_bytes(arr))[:-10])  # truncated gzip stream
    with pytest.raises(DataError, match="broken.gz"):
        read_idx(broken)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(empty)


def test_read_real_labels():
    _need_real()
    labels = read_idx(REAL_DATA / T10K[1])
    assert labels.shape == (10_000,) and labels.dtype == np.uint8
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]
    images = read_idx(REAL_DATA / T10K[0])
    assert images.shape == (10_000, 28, 28)


@pytest.fixture(scope="module")
def mnist1():
    _need_real()
    return load_mnist_dataset(1, seed=0)


def test_mnist_held_out_split(mnist1):
    labels = read_idx(REAL_DATA / T10K[1])
    n1 = int((labels == 1).sum())
    assert n1 == 1_135
    n_normal = 10_000 - n1
    n_fit = round(0.8 * n_normal)
    n_cal = round(0.2 * n_fit)  # held out of the fitting rows to calibrate
    n_sel = min(round(0.1 * n_fit), 2048)  # and to select a checkpoint
    ds = mnist1
    assert ds.train.shape == (n_fit - n_cal - n_sel, 784) and ds.train.dtype == np.float32
    assert ds.select.shape == (n_sel, 784)
    assert ds.val.shape == (n_cal, 784)
    assert ds.test_x.shape == (n_normal - n_fit + n1, 784)
    assert int(ds.test_y.sum()) == n1
    assert ds.spec.kind == "image" and ds.spec.shape == [1, 28, 28]
    assert ds.spec.value_range == [-1.0, 1.0]
    assert ds.spec.feature_names[-1] == "px783" and len(ds.spec.feature_names) == 784
    assert ds.train.min() == -1.0 and ds.train.max() == 1.0
    assert ds.info["parts"] == ["t10k"]


def test_mnist_train_has_no_anomaly_digit(mnist1):
    images = read_idx(REAL_DATA / T10K[0]).reshape(10_000, -1)
    labels = read_idx(REAL_DATA / T10K[1])
    scaled = images.astype(np.float32) / np.float32(127.5) - 1.0
    index = {r.tobytes(): int(lab) for r, lab in zip(scaled, labels, strict=True)}
    train_labels = [index[r.tobytes()] for r in mnist1.train[:3_000]]
    assert 1 not in train_labels
    anomaly_labels = {index[r.tobytes()] for r in mnist1.test_x[mnist1.test_y == 1]}
    assert anomaly_labels == {1}


def test_mnist_missing_files(tmp_path, monkeypatch):
    monkeypatch.setenv("MEG_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("MEG_DOWNLOAD", raising=False)
    with pytest.raises(DataError) as e:
        load_mnist_dataset(1)
    msg = str(e.value)
    assert "t10k-images-idx3-ubyte.gz" in msg
    assert str(tmp_path / "mnist") in msg
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/" in msg


def test_mnist_uses_train_and_t10k_when_both_exist(tmp_path, monkeypatch):
    _need_real()
    (tmp_path / "mnist").mkdir()
    for rel in T10K:
        shutil.copy(REAL_DATA / rel, tmp_path / rel)
    rng = np.random.default_rng(0)
    fake_imgs = rng.integers(0, 256, size=(50, 28, 28))
    fake_labels = np.repeat(np.arange(10), 5)
    (tmp_path / "mnist/train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(_idx_bytes(fake_imgs))
    )
    (tmp_path / "mnist/train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(_idx_bytes(fake_labels))
    )
    monkeypatch.setenv("MEG_DATA_DIR", str(tmp_path))
    ds = load_mnist_dataset(None, seed=0)
    assert ds.info["parts"] == ["train", "t10k"]
    assert len(ds.train) + len(ds.val) + len(ds.select) == 10_050
