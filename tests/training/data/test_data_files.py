"""Data-file lookup, checksum verification and the opt-in download."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from training.data import files
from training.data.files import KNOWN_FILES, DataError, KnownFile, data_dir, require_file

LABELS = "mnist/t10k-labels-idx1-ubyte.gz"
# Read before any test points MEG_DATA_DIR at a temporary directory.
REAL_DATA = Path(os.environ.get("MEG_DATA_DIR", "data"))


def _real(relpath: str) -> Path:
    path = REAL_DATA / relpath
    if not path.is_file():
        pytest.skip(f"{relpath} not under MEG_DATA_DIR (set MEG_DATA_DIR=/work/shared/data)")
    return path


@pytest.fixture
def tmp_data(tmp_path, monkeypatch):
    monkeypatch.setenv("MEG_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("MEG_DOWNLOAD", raising=False)
    return tmp_path


@pytest.fixture
def fake_known(tmp_data, monkeypatch):
    """A known file with a made-up hash, independent of the real data."""
    content = b"meg test data\n"
    known = KnownFile("fake/file.bin", hashlib.sha256(content).hexdigest(), "https://x/f.bin")
    monkeypatch.setitem(KNOWN_FILES, known.relpath, known)
    return known, content


def test_data_dir_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv("MEG_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path
    monkeypatch.delenv("MEG_DATA_DIR")
    assert data_dir() == Path("data")
    monkeypatch.setenv("MEG_DATA_DIR", "  ")
    assert data_dir() == Path("data")


def test_known_files_table():
    assert set(KNOWN_FILES) == {
        "kddcup99/kddcup.data_10_percent.gz",
        "mnist/t10k-images-idx3-ubyte.gz",
        "mnist/t10k-labels-idx1-ubyte.gz",
    }
    for f in KNOWN_FILES.values():
        assert len(f.sha256) == 64 and f.url.startswith("http")
    assert KNOWN_FILES[LABELS].url == (
        "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz"
    )


def test_missing_file_message_names_path_setting_and_url(tmp_data, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("downloaded without MEG_DOWNLOAD=1")

    monkeypatch.setattr(files.urllib.request, "urlretrieve", no_network)
    with pytest.raises(DataError) as e:
        require_file(LABELS)
    msg = str(e.value)
    assert LABELS in msg
    assert str((tmp_data / LABELS).absolute()) in msg
    assert f"MEG_DATA_DIR={tmp_data}" in msg
    assert KNOWN_FILES[LABELS].url in msg
    assert "MEG_DOWNLOAD=1" in msg


def test_missing_file_message_without_env(monkeypatch, tmp_path):
    monkeypatch.delenv("MEG_DATA_DIR", raising=False)
    monkeypatch.delenv("MEG_DOWNLOAD", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="MEG_DATA_DIR is not set"):
        require_file(LABELS)


def test_checksum_mismatch_names_file_and_hashes(tmp_data):
    src = _real(LABELS)
    dst = tmp_data / LABELS
    dst.parent.mkdir(parents=True)
    data = bytearray(src.read_bytes())
    data[100] ^= 0xFF
    dst.write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(DataError) as e:
        require_file(LABELS)
    msg = str(e.value)
    assert LABELS in msg and str(dst) in msg
    assert KNOWN_FILES[LABELS].sha256 in msg
    assert actual in msg


def test_good_copy_verifies_and_is_hashed_once(tmp_data, monkeypatch):
    src = _real(LABELS)
    (tmp_data / "mnist").mkdir()
    shutil.copy(src, tmp_data / LABELS)
    calls = []
    real_hash = files.sha256_file
    monkeypatch.setattr(files, "sha256_file", lambda p: calls.append(p) or real_hash(p))
    assert require_file(LABELS) == tmp_data / LABELS
    assert require_file(LABELS) == tmp_data / LABELS
    assert len(calls) == 1


def test_changed_file_is_rehashed(fake_known):
    known, content = fake_known
    path = data_dir() / known.relpath
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    require_file(known.relpath)
    path.write_bytes(content + b"tampered")
    with pytest.raises(DataError, match="checksum mismatch"):
        require_file(known.relpath)


def test_unknown_file(tmp_data):
    with pytest.raises(DataError, match="no official URL"):
        require_file("other/thing.csv")
    (tmp_data / "other").mkdir()
    (tmp_data / "other/thing.csv").write_text("a\n1\n")
    assert require_file("other/thing.csv") == tmp_data / "other/thing.csv"


def test_download_only_with_env(fake_known, monkeypatch):
    known, content = fake_known
    fetched = []

    def fake_retrieve(url, dest):
        fetched.append(url)
        Path(dest).write_bytes(content)

    monkeypatch.setattr(files.urllib.request, "urlretrieve", fake_retrieve)
    with pytest.raises(DataError, match="missing"):
        require_file(known.relpath)
    assert fetched == []
    monkeypatch.setenv("MEG_DOWNLOAD", "1")
    path = require_file(known.relpath)
    assert fetched == [known.url]
    assert path.read_bytes() == content


def test_download_with_wrong_hash_is_not_installed(fake_known, monkeypatch):
    known, _ = fake_known
    monkeypatch.setattr(
        files.urllib.request, "urlretrieve", lambda url, dest: Path(dest).write_bytes(b"junk")
    )
    monkeypatch.setenv("MEG_DOWNLOAD", "1")
    with pytest.raises(DataError, match=known.sha256):
        require_file(known.relpath)
    dest = data_dir() / known.relpath
    assert not dest.exists()
    assert not dest.with_name(dest.name + ".part").exists()
