"""`meg score`: CSV and Parquet files scored in chunks, in-process from a bundle and
through a server, with the same numbers as the server's /anomaly; clear errors."""

from __future__ import annotations

import io
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import uvicorn
from fastapi.testclient import TestClient
from megtest import make_table

from meg.bundle import read_manifest
from meg.cli import main
from meg.client import Client
from meg.score_file import BundleScorer, ServerScorer, read_chunks, score_file
from service.main import create_app
from service.settings import Settings


@pytest.fixture(scope="module")
def app_client(tiny_models_dir: Path) -> Iterator[TestClient]:
    settings = Settings(models_dir=tiny_models_dir, log_level="WARNING", inference_workers=2)
    with TestClient(create_app(settings)) as tc:
        yield tc


def _toy_csv(models: Path, tmp: Path, n: int = 50) -> Path:
    names = read_manifest(models / "toy").data.feature_names
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(0, 2, (n, len(names))), columns=names)
    frame.insert(0, "id", [f"r{i}" for i in range(n)])
    path = tmp / "points.csv"
    frame.to_csv(path, index=False)
    return path


def test_csv_in_process_matches_server(tiny_models_dir: Path, tmp_path: Path,
                                       app_client: TestClient,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    src = _toy_csv(tiny_models_dir, tmp_path)
    out = tmp_path / "scores.csv"
    assert main(["score", str(src), "--bundle", str(tiny_models_dir), "--model", "toy",
                 "--out", str(out), "--chunk-size", "7", "--keep", "id",
                 "--target-fpr", "0.2", "--quiet"]) == 0
    got = pd.read_csv(out)
    assert list(got.columns) == ["row", "id", "score", "p_value", "percentile", "is_anomaly"]
    assert got["row"].tolist() == list(range(50)) and got["id"].iloc[-1] == "r49"
    assert "50 rows" in capsys.readouterr().err

    rows = pd.read_csv(src).drop(columns="id").to_numpy().tolist()
    ref = app_client.post("/anomaly", json={"model": "toy", "inputs": rows,
                                            "target_fpr": 0.2}).json()["results"]
    np.testing.assert_allclose(got["score"], [r["score"] for r in ref], rtol=1e-5)
    np.testing.assert_allclose(got["p_value"], [r["p_value"] for r in ref])
    assert got["is_anomaly"].tolist() == [r["is_anomaly"] for r in ref]

    # --score picks the score: energy is E(x) of /energy.
    assert main(["score", str(src), "--bundle", str(tiny_models_dir / "toy"), "--score",
                 "energy", "--out", str(out), "--quiet"]) == 0
    energies = app_client.post("/energy", json={"model": "toy", "inputs": rows}).json()
    np.testing.assert_allclose(pd.read_csv(out)["score"], energies["energies"], rtol=1e-6)

    # To stdout, by explicit threshold: everything at or above it.
    assert main(["score", str(src), "--bundle", str(tiny_models_dir / "toy"),
                 "--threshold=-1e30", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("row,score,p_value,percentile,is_anomaly\n")
    assert printed.count("True") == 50


def test_parquet_records_through_server_and_bundle(tiny_models_dir: Path, tmp_path: Path,
                                                   app_client: TestClient) -> None:
    """Tabular records from Parquet (extra columns ignored), a Parquet output; the server
    scorer and the in-process one agree."""
    src = tmp_path / "events.parquet"
    make_table(n=120, seed=5).to_parquet(src, row_group_size=40)
    sizes = [len(c) for c in read_chunks(src, 32)]
    assert sum(sizes) == 120 and max(sizes) <= 32 and len(sizes) >= 4  # never the whole file

    server = ServerScorer(Client(http=app_client), "events", target_fpr=0.3, request_rows=25)
    via_server = tmp_path / "server.parquet"
    s1 = score_file(src, server, out=via_server, chunk_size=32, progress=False)
    via_bundle = tmp_path / "bundle.parquet"
    with BundleScorer(tiny_models_dir / "events", target_fpr=0.3) as local:
        s2 = score_file(src, local, out=via_bundle, chunk_size=50, progress=False)
    assert s1.rows == s2.rows == 120 and s1.flagged == s2.flagged
    a, b = pd.read_parquet(via_server), pd.read_parquet(via_bundle)
    np.testing.assert_allclose(a["score"], b["score"], rtol=1e-5)
    np.testing.assert_array_equal(a["p_value"], b["p_value"])
    assert a["is_anomaly"].tolist() == b["is_anomaly"].tolist()
    assert a["is_anomaly"].dtype == bool and b["row"].tolist() == list(range(120))


def test_headerless_gzip_csv_like_the_raw_kdd_file(tiny_models_dir: Path, tmp_path: Path,
                                                   app_client: TestClient) -> None:
    """--no-header: the columns are the model's features in order, a trailing label column
    is kept by its position name; gzip is read as is. Same numbers as named columns."""
    table = make_table(n=60, seed=3)
    features = read_manifest(tiny_models_dir / "events").preprocessing.features  # type: ignore[union-attr]
    ordered = table[[f.name for f in features]].copy()
    ordered["label"] = [f"l{i % 3}" for i in range(60)]
    raw = tmp_path / "events.data.gz"
    ordered.to_csv(raw, index=False, header=False, compression="gzip")
    named = tmp_path / "events.csv"
    ordered.to_csv(named, index=False)
    out_raw, out_named = tmp_path / "raw.csv", tmp_path / "named.csv"
    common = ["--bundle", str(tiny_models_dir / "events"), "--target-fpr", "0.3", "--quiet"]
    assert main(["score", str(raw), "--no-header", "--keep", f"column{len(features)}",
                 "--out", str(out_raw), "--chunk-size", "16", *common]) == 0
    assert main(["score", str(named), "--out", str(out_named), *common]) == 0
    a, b = pd.read_csv(out_raw), pd.read_csv(out_named)
    assert len(a) == 60 and a[f"column{len(features)}"].tolist() == ordered["label"].tolist()
    np.testing.assert_array_equal(a["score"], b["score"])
    assert a["is_anomaly"].tolist() == b["is_anomaly"].tolist()
    # Fewer columns than the model reads: a clear error, exit 2.
    short = tmp_path / "short.csv"
    ordered.iloc[:, :2].to_csv(short, index=False, header=False)
    assert main(["score", str(short), "--no-header", *common]) == 2


def test_url_against_a_live_server(tiny_models_dir: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir / "toy", models / "toy")
    port = _free_port()
    settings = Settings(models_dir=models, log_level="WARNING", inference_workers=1,
                        api_keys="k")
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
        src = _toy_csv(tiny_models_dir, tmp_path, n=30)
        url = f"http://127.0.0.1:{port}"
        assert main(["score", str(src), "--url", url, "--model", "toy", "--api-key", "k",
                     "--chunk-size", "8", "--quiet", "--target-fpr", "0.2"]) == 0
        out = pd.read_csv(io.StringIO(capsys.readouterr().out))
        x = pd.read_csv(src).drop(columns="id").to_numpy()
        with BundleScorer(models / "toy", target_fpr=0.2) as local:
            np.testing.assert_allclose(out["score"], local.score(x, None).score, rtol=1e-5)
        # Errors name the cause: wrong key, unknown model.
        assert main(["score", str(src), "--url", url, "--model", "toy", "--quiet"]) == 2
        assert "401" in capsys.readouterr().err
        assert main(["score", str(src), "--url", url, "--model", "nope", "--api-key", "k",
                     "--quiet"]) == 2
        assert "model_not_found" in capsys.readouterr().err
    finally:
        server.should_exit = True
        thread.join(30)


def test_errors(tiny_models_dir: Path, tmp_path: Path,
                capsys: pytest.CaptureFixture[str]) -> None:
    src = _toy_csv(tiny_models_dir, tmp_path, n=5)
    bundle = str(tiny_models_dir / "toy")
    assert main(["score", str(src), "--bundle", bundle, "--url", "http://x"]) == 2
    assert "exactly one" in capsys.readouterr().err
    assert main(["score", str(src), "--url", "http://127.0.0.1:9"]) == 2
    assert "--model" in capsys.readouterr().err
    wide = tmp_path / "wide.csv"
    pd.DataFrame(np.zeros((3, 5)), columns=list("abcde")).to_csv(wide, index=False)
    assert main(["score", str(wide), "--bundle", bundle, "--quiet"]) == 2
    assert "columns" in capsys.readouterr().err
    holes = tmp_path / "holes.csv"
    holes.write_text(pd.read_csv(src).drop(columns="id").to_csv(index=False) + ",\n")
    assert main(["score", str(holes), "--bundle", bundle, "--quiet", "--chunk-size", "4"]) == 2
    assert "rows 4-5" in capsys.readouterr().err
    events = tmp_path / "events.csv"
    make_table(n=5).drop(columns="protocol").to_csv(events, index=False)
    assert main(["score", str(events), "--bundle", str(tiny_models_dir / "events"),
                 "--quiet"]) == 2
    assert "protocol" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connection_failure_is_an_error(tmp_path: Path, tiny_models_dir: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    src = _toy_csv(tiny_models_dir, tmp_path, n=3)
    assert main(["score", str(src), "--url", "http://127.0.0.1:9", "--model", "toy",
                 "--quiet"]) == 2
    assert "meg score: error" in capsys.readouterr().err
