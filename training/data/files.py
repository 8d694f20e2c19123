"""Where meg's data files live and how they are checked.

Data is never shipped with the project: it lives under a data directory (env
``MEG_DATA_DIR``, else ``./data``), one file per relative path such as
``kddcup99/kddcup.data_10_percent.gz``. Files meg knows about carry a SHA-256 and an
official URL; `require_file` verifies the hash (once per process) and, when a file is
missing, says exactly where it goes and where to get it. Nothing is downloaded unless
``MEG_DOWNLOAD=1`` is set, so tests and training never touch the network by accident.
"""

from __future__ import annotations

import logging
import os
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from meg.bundle import sha256_file

log = logging.getLogger(__name__)

ENV_DATA_DIR = "MEG_DATA_DIR"
ENV_DOWNLOAD = "MEG_DOWNLOAD"
DEFAULT_DATA_DIR = "data"

_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"


class DataError(Exception):
    """A data file is missing, corrupt or unusable. The message names the file."""


@dataclass(frozen=True)
class KnownFile:
    """A data file meg knows: where it sits under the data directory, its SHA-256 and
    where the official copy can be downloaded."""

    relpath: str
    sha256: str
    url: str


KNOWN_FILES: dict[str, KnownFile] = {
    f.relpath: f
    for f in (
        KnownFile(
            "kddcup99/kddcup.data_10_percent.gz",
            "8045aca0d84e70e622d1148d7df782496f6333bf6eb979a1b0837c42a9fd9561",
            "http://kdd.ics.uci.edu/databases/kddcup99/kddcup.data_10_percent.gz",
        ),
        KnownFile(
            "mnist/t10k-images-idx3-ubyte.gz",
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            _MNIST_URL + "t10k-images-idx3-ubyte.gz",
        ),
        KnownFile(
            "mnist/t10k-labels-idx1-ubyte.gz",
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            _MNIST_URL + "t10k-labels-idx1-ubyte.gz",
        ),
    )
}

# Hashing the 2 MB KDD file costs little, but loaders are called many times per process
# (tests, benches): remember what was verified, keyed so that a changed file is re-hashed.
_verified: dict[tuple[str, int, int], str] = {}
_verified_lock = threading.Lock()


def data_dir() -> Path:
    """The data directory: env ``MEG_DATA_DIR`` if set and non-empty, else ``./data``
    (relative to the current working directory)."""
    env = os.environ.get(ENV_DATA_DIR, "").strip()
    return Path(env).expanduser() if env else Path(DEFAULT_DATA_DIR)


def _data_dir_setting() -> str:
    env = os.environ.get(ENV_DATA_DIR, "").strip()
    if env:
        return f"{ENV_DATA_DIR}={env}"
    return f"{ENV_DATA_DIR} is not set, so the data directory is ./data under {Path.cwd()}"


def _cache_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def verify_file(path: Path, expected: str, name: str | None = None) -> None:
    """Check `path` against the SHA-256 `expected`; raise DataError naming the file and
    both hashes on a mismatch. A file that passed is not hashed again in this process
    unless its size or modification time changes."""
    path = Path(path)
    key = _cache_key(path)
    with _verified_lock:
        if _verified.get(key) == expected:
            return
    actual = sha256_file(path)
    if actual != expected:
        raise DataError(
            f"{name or path.name}: checksum mismatch for {path}: expected SHA-256 {expected}, "
            f"got {actual}. The file is corrupt or not the official one; delete it and "
            f"fetch it again."
        )
    with _verified_lock:
        _verified[key] = expected


def _download(known: KnownFile, dest: Path) -> None:
    """Fetch `known` to `dest` through a temporary file, verifying before it lands."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    log.info("downloading %s to %s", known.url, dest)
    try:
        urllib.request.urlretrieve(known.url, tmp)
        actual = sha256_file(tmp)
        if actual != known.sha256:
            raise DataError(
                f"{known.relpath}: download from {known.url} has SHA-256 {actual}, "
                f"expected {known.sha256}; not installed"
            )
        os.replace(tmp, dest)
    except OSError as e:
        raise DataError(f"{known.relpath}: download from {known.url} failed: {e}") from e
    finally:
        if tmp.exists():
            tmp.unlink()


def require_file(relpath: str) -> Path:
    """The path of data file `relpath` under `data_dir()`, verified when meg knows its hash.

    Missing file: raises DataError saying which file, where it must go, the
    ``MEG_DATA_DIR`` setting and the official URL; with ``MEG_DOWNLOAD=1`` it is
    downloaded there instead (and verified). Wrong contents: DataError with both hashes.
    Files meg does not know are returned unverified when they exist."""
    known = KNOWN_FILES.get(relpath)
    path = data_dir() / relpath
    if not path.is_file():
        if known is not None and os.environ.get(ENV_DOWNLOAD, "") == "1":
            _download(known, path)
        else:
            if known is not None:
                where = f"download it from {known.url} and put it there"
                hint = f" (or set {ENV_DOWNLOAD}=1 to let meg fetch it)"
            else:
                where, hint = "meg has no official URL for it", ""
            raise DataError(
                f"{relpath}: data file missing. It should be at {path.absolute()} "
                f"({_data_dir_setting()}); {where}{hint}."
            )
    if known is not None:
        verify_file(path, known.sha256, relpath)
    return path
