"""The service's own metrics registry: the standard process_*/python_* collectors are on
it, and meg_models_loaded follows the model registry through loads, failures and
removals."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from svc_helpers import metric_value

from meg import bundle as B
from service.engine.models import ModelRegistry
from service.metrics import Metrics
from service.settings import Settings


def _loaded(metrics: Metrics) -> float:
    return metric_value(metrics.exposition().decode(), "meg_models_loaded")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process_* needs /proc")
def test_metrics_page_has_process_and_python_collectors(client: TestClient) -> None:
    text = client.get("/metrics").text
    assert metric_value(text, "process_resident_memory_bytes") > 1e6
    assert metric_value(text, "process_open_fds") > 0
    assert metric_value(text, "python_info") == 1
    assert "python_gc_collections_total" in text


def test_models_loaded_on_the_metrics_page_matches_the_served_models(client: TestClient) -> None:
    served = client.get("/models").json()["models"]
    assert len(served) >= 2
    assert metric_value(client.get("/metrics").text, "meg_models_loaded") == len(served)


def test_two_registries_in_one_process_do_not_collide() -> None:
    a, b = Metrics(), Metrics()  # would raise "Duplicated timeseries" on a shared registry
    a.model_info.labels("m", "1", "CPUExecutionProvider", "cpu").set(1)
    assert (_loaded(a), _loaded(b)) == (1, 0)


def test_models_loaded_follows_loads_failures_and_removals(models_dir: Path,
                                                          tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    metrics = Metrics()
    reg = ModelRegistry(Settings(models_dir=root, log_level="WARNING"), metrics)
    reg.scan()
    assert _loaded(metrics) == 0  # up, serving nothing: what MegNoModelLoaded alerts on
    shutil.copytree(models_dir / "toy", root / "toy")
    shutil.copytree(models_dir / "events", root / "broken")
    (root / "broken" / B.ENERGY_ONNX).write_bytes(b"garbage")
    reg.scan()
    assert set(reg.models) == {"toy"} and "broken" in reg.failed
    assert _loaded(metrics) == 1  # a failed bundle is not served
    shutil.copytree(models_dir / "events", root / "events")
    reg.scan()
    assert _loaded(metrics) == 2
    shutil.rmtree(root / "toy")
    shutil.rmtree(root / "events")
    reg.scan()
    reg.scan()  # removal takes two scans in a row (a re-export renames in and out)
    assert reg.models == {} and _loaded(metrics) == 0
