"""MNIST from IDX files under ``MEG_DATA_DIR/mnist``, with the held-out-digit protocol.

Whichever of the train (60k) and t10k (10k) image/label pairs are present are used,
concatenated (train first). Only t10k is available in meg's shared data, so recipes
split those 10k images themselves: 80% of the normal digits train, the other 20% plus
every image of the held-out digit test (see `training.data.digits.held_out_split`).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from training.data import CalibrationSplit, Dataset
from training.data.digits import image_dataset
from training.data.files import KNOWN_FILES, DataError, data_dir, require_file

# IDX type byte -> numpy dtype (big-endian, as the format stores them).
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_PARTS = ("train", "t10k")
SIDE = 28


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip'd, or plain) into an array of its declared shape and type.

    Raises DataError naming the file when it is not gzip/IDX, the magic number is wrong,
    or the data does not match the declared dimensions."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(
            f"{path}: not an IDX file (magic number {raw[:4].hex() or 'missing'}; "
            f"expected 0000 then a type byte in {sorted(hex(k) for k in _IDX_DTYPES)})"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({ndim} dimensions declared)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX data is {len(raw) - header} bytes, but shape {dims} of "
            f"{dtype} needs {expected}"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _pair(part: str) -> tuple[str, str]:
    return f"mnist/{part}-images-idx3-ubyte.gz", f"mnist/{part}-labels-idx1-ubyte.gz"


def _path(relpath: str) -> Path:
    # Known files are verified by checksum; others (the 60k train set) are read as found.
    return require_file(relpath) if relpath in KNOWN_FILES else data_dir() / relpath


def load_mnist_arrays() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All available MNIST images (N, 28, 28) uint8 and labels (N,), plus the parts used.

    When no complete image/label pair exists, the t10k files are required (DataError
    saying where they go, or a download with ``MEG_DOWNLOAD=1``)."""
    root = data_dir()
    parts = [p for p in _PARTS if all((root / r).is_file() for r in _pair(p))]
    if not parts:
        parts = ["t10k"]
    images, labels = [], []
    for part in parts:
        img_rel, lab_rel = _pair(part)
        img, lab = read_idx(_path(img_rel)), read_idx(_path(lab_rel))
        if img.ndim != 3 or img.shape[1:] != (SIDE, SIDE) or lab.ndim != 1:
            raise DataError(f"{img_rel}/{lab_rel}: unexpected shapes {img.shape} and {lab.shape}")
        if len(img) != len(lab):
            raise DataError(f"{img_rel}: {len(img)} images but {lab_rel} has {len(lab)} labels")
        images.append(img)
        labels.append(lab)
    return np.concatenate(images), np.concatenate(labels).astype(np.int64), parts


def load_mnist_dataset(anomaly_digit: int | None = 1, seed: int = 0,
                       calibration: CalibrationSplit = CalibrationSplit()) -> Dataset:
    """MNIST as a held-out-digit Dataset: shape [1, 28, 28], pixels in [-1, 1], feature
    names px0..px783. `anomaly_digit` None or -1: train/val only, no test set. `val`:
    the calibration rows held out of the training rows (`calibration`)."""
    images, labels, parts = load_mnist_arrays()
    pixels = images.reshape(len(images), -1).astype(np.float32) / np.float32(127.5) - 1.0
    ds = image_dataset("mnist", pixels.astype(np.float32), labels, SIDE, anomaly_digit, seed,
                       calibration)
    assert ds.info is not None
    ds.info["parts"] = parts
    return ds
