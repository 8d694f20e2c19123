"""Open Inference Protocol over REST, driven by NVIDIA's tritonclient (nothing
meg-specific on the client side): probes, metadata, inference as JSON and as binary
tensors, the same numbers as the native endpoints, and the V2 error shape."""

from __future__ import annotations

import gzip
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException
from v2_helpers import API_KEY, AUTH, LiveServer


@pytest.fixture(scope="module")
def tc(live_server: LiveServer) -> th.InferenceServerClient:
    return th.InferenceServerClient(live_server.http_url, network_timeout=30)


def _dims(tc: th.InferenceServerClient, bundle: str) -> tuple[int, int]:
    """(data_dim, latent_dim) from the declared tensors of `bundle`.generate."""
    meta = tc.get_model_metadata(f"{bundle}.generate", headers=AUTH)
    return int(meta["outputs"][0]["shape"][1]), int(meta["inputs"][0]["shape"][1])


def _input(name: str, a: np.ndarray, binary: bool) -> th.InferInput:
    t = th.InferInput(name, list(a.shape), {np.float32: "FP32", np.int64: "INT64"}[a.dtype.type])
    t.set_data_from_numpy(a, binary_data=binary)
    return t


def _infer(tc: th.InferenceServerClient, model: str, inputs: dict[str, np.ndarray],
           binary: bool, outputs: list[str] | None = None,
           parameters: dict[str, Any] | None = None) -> th.InferResult:
    req_outputs = ([th.InferRequestedOutput(o, binary_data=binary) for o in outputs]
                   if outputs else None)
    return tc.infer(model, [_input(k, v, binary) for k, v in inputs.items()],
                    outputs=req_outputs, headers=dict(AUTH), parameters=parameters)
    # (a copy: tritonclient adds its own headers to the dict it is given)


def test_probes_and_server_metadata(tc: th.InferenceServerClient,
                                    live_server: LiveServer) -> None:
    assert tc.is_server_live() and tc.is_server_ready()  # open, like /healthz
    meta = tc.get_server_metadata(headers=AUTH)
    assert meta["name"] == "meg" and "binary_tensor_data" in meta["extensions"]
    assert meta["version"]
    # Everything but the health probes needs the API key, answered in the V2 shape.
    with pytest.raises(InferenceServerException) as e:
        tc.get_server_metadata()
    assert e.value.status() == "401"
    r = httpx.get(f"http://{live_server.http_url}/v2/models/toy", timeout=10)
    assert r.status_code == 401 and isinstance(r.json()["error"], str)
    r = httpx.get(f"http://{live_server.http_url}/v2/models/toy",
                  headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
    assert r.status_code == 200


def test_model_metadata_declares_tensors(tc: th.InferenceServerClient) -> None:
    d, lat = _dims(tc, "digits")
    assert d == 64 and lat >= 1
    energy = tc.get_model_metadata("digits.energy", headers=AUTH)
    assert energy["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, d]}]
    assert energy["outputs"] == [{"name": "energy", "datatype": "FP32", "shape": [-1]}]
    # The bare bundle name is its energy model; the version is the bundle's.
    bare = tc.get_model_metadata("digits", headers=AUTH)
    assert bare["inputs"] == energy["inputs"] and bare["outputs"] == energy["outputs"]
    version = bare["versions"][0]
    assert tc.get_model_metadata("digits", version, headers=AUTH)["name"] == "digits"
    anomaly = tc.get_model_metadata("digits.anomaly", headers=AUTH)
    outs = {o["name"]: (o["datatype"], o["shape"]) for o in anomaly["outputs"]}
    assert outs["score"] == ("FP32", [-1]) and outs["is_anomaly"] == ("BOOL", [-1])
    sample = tc.get_model_metadata("digits.sample", headers=AUTH)
    assert {i["name"]: i["datatype"] for i in sample["inputs"]} == {"n": "INT64",
                                                                    "seed": "INT64"}
    encode = tc.get_model_metadata("digits.encode", headers=AUTH)
    assert encode["outputs"] == [{"name": "z", "datatype": "FP32", "shape": [-1, lat]}]
    assert tc.is_model_ready("digits.anomaly", headers=AUTH)
    assert not tc.is_model_ready("nope.energy", headers=AUTH)
    assert not tc.is_model_ready("digits", "not-a-version", headers=AUTH)


@pytest.mark.parametrize("binary", [False, True])
def test_energy_encode_anomaly_match_native(tc: th.InferenceServerClient,
                                            live_server: LiveServer, binary: bool) -> None:
    x = np.random.default_rng(0).random((7, 64), dtype=np.float32)
    native = live_server.native
    res = _infer(tc, "digits", {"x": x}, binary, ["energy"])
    want = np.asarray(native.post("/energy", json={"model": "digits", "inputs": x.tolist()})
                      .json()["energies"], dtype=np.float32)
    assert res.as_numpy("energy").dtype == np.float32
    np.testing.assert_array_equal(res.as_numpy("energy"), want)
    # A compressed request body (tritonclient's request_compression_algorithm).
    for algo in ("gzip", "deflate"):
        packed = tc.infer("digits", [_input("x", x, binary)], headers=dict(AUTH),
                          request_compression_algorithm=algo)
        np.testing.assert_array_equal(packed.as_numpy("energy"), want)

    z = _infer(tc, "digits.encode", {"x": x}, binary).as_numpy("z")
    want_z = native.post("/encode", json={"model": "digits", "inputs": x.tolist()}).json()
    np.testing.assert_array_equal(z, np.asarray(want_z["latent"], dtype=np.float32))

    a = _infer(tc, "digits.anomaly", {"x": x}, binary)
    body = native.post("/anomaly", json={"model": "digits", "inputs": x.tolist()}).json()
    rows = body["results"]
    np.testing.assert_allclose(a.as_numpy("score"), [r["score"] for r in rows], rtol=1e-6)
    np.testing.assert_allclose(a.as_numpy("percentile"), [r["percentile"] for r in rows],
                               rtol=1e-6)
    np.testing.assert_allclose(a.as_numpy("p_value"), [r["p_value"] for r in rows], rtol=1e-6)
    assert a.as_numpy("is_anomaly").tolist() == [r["is_anomaly"] for r in rows]
    params = a.get_response()["parameters"]
    assert params["threshold"] == pytest.approx(body["threshold"])
    assert params["target_fpr"] == pytest.approx(body["target_fpr"])
    # Flagging by p-value at another rate: the native answer at the same rate.
    strict = _infer(tc, "digits.anomaly", {"x": x}, binary, parameters={"target_fpr": 0.5})
    ref = native.post("/anomaly", json={"model": "digits", "inputs": x.tolist(),
                                        "target_fpr": 0.5}).json()["results"]
    assert strict.as_numpy("is_anomaly").tolist() == [r["is_anomaly"] for r in ref]
    # Every score the bundle serves (energy, and the support scores when bundled).
    scores = native.get("/models/digits").json()["scores"]
    assert "energy" in scores
    for name in scores:
        v2 = _infer(tc, "digits.anomaly", {"x": x}, binary, parameters={"score": name})
        ref = native.post("/anomaly", json={"model": "digits", "inputs": x.tolist(),
                                            "score": name}).json()
        assert v2.get_response()["parameters"]["score"] == ref["score"] == name
        np.testing.assert_allclose(v2.as_numpy("score"), [r["score"] for r in ref["results"]],
                                   rtol=1e-6)
    # A threshold below every score flags every row.
    low = _infer(tc, "digits.anomaly", {"x": x}, binary, parameters={"threshold": -1e30})
    assert low.as_numpy("is_anomaly").all()


@pytest.mark.parametrize("binary", [False, True])
def test_sample_and_generate_match_native(tc: th.InferenceServerClient,
                                          live_server: LiveServer, binary: bool) -> None:
    args = {"n": np.array([5], dtype=np.int64), "seed": np.array([123], dtype=np.int64)}
    res = _infer(tc, "toy.sample", args, binary)
    x, z = res.as_numpy("x"), res.as_numpy("z")
    assert x.shape == (5, 2) and res.get_response()["parameters"]["seed"] == 123
    native = live_server.native.post("/sample", json={"model": "toy", "n": 5, "seed": 123,
                                                      "return_latent": True}).json()
    np.testing.assert_array_equal(x, np.asarray(native["samples"], dtype=np.float32))
    np.testing.assert_array_equal(z, np.asarray(native["latent"], dtype=np.float32))
    # generate(z) is the generator alone: the same rows again.
    np.testing.assert_array_equal(_infer(tc, "toy.generate", {"z": z}, binary).as_numpy("x"), x)
    # Latent MALA first (request parameter mcmc_steps): the native answer with mcmc.steps.
    mala = _infer(tc, "toy.sample", args, binary, parameters={"mcmc_steps": 5})
    ref = live_server.native.post("/sample", json={"model": "toy", "n": 5, "seed": 123,
                                                   "mcmc": {"steps": 5}}).json()
    np.testing.assert_array_equal(mala.as_numpy("x"), np.asarray(ref["samples"], np.float32))
    assert not np.array_equal(mala.as_numpy("x"), x)
    # No seed: a random one, reported so the draw can be repeated.
    again = _infer(tc, "toy.sample", {"n": args["n"]}, binary)
    assert isinstance(again.get_response()["parameters"]["seed"], int)


def test_errors(tc: th.InferenceServerClient, live_server: LiveServer) -> None:
    x = np.zeros((2, 64), dtype=np.float32)
    cases = [("nope", {"x": x}, "404"), ("digits.nope", {"x": x}, "404"),
             ("digits", {"x": np.zeros((2, 3), dtype=np.float32)}, "400"),
             ("digits", {"x": np.zeros((64,), dtype=np.float32)}, "400"),
             ("digits", {"y": x}, "400"),
             ("toy.sample", {"n": np.array([10**6], dtype=np.int64)}, "400"),
             ("toy.sample", {"seed": np.array([1], dtype=np.int64)}, "400")]
    for model, inputs, status in cases:
        with pytest.raises(InferenceServerException) as e:
            _infer(tc, model, inputs, True)
        assert e.value.status() == status, (model, e.value.message())
        assert e.value.message()  # a message, not a nested object
    base = f"http://{live_server.http_url}/v2/models/digits/infer"

    def post(body: bytes, **headers: str) -> httpx.Response:
        return httpx.post(base, content=body, headers={**AUTH, **headers}, timeout=10)

    header = (b'{"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", '
              b'"parameters": {"binary_data_size": 8}}]}')
    bad = [post(b"{not json"),
           post(b'{"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", '
                b'"data": [1, 2]}]}'),
           post(b'{"inputs": [{"name": "x", "shape": [1, 64], "datatype": "STRING", '
                b'"data": []}]}'),
           # binary_data_size that does not match the shape, and bytes left over
           post(header + b"\0" * 8, **{"Inference-Header-Content-Length": str(len(header))}),
           post(header.replace(b"8}", b"256}") + b"\0" * 300,
                **{"Inference-Header-Content-Length": str(len(header) + 2)}),
           post(b'{"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", '
                b'"data": [' + b",".join([b"0"] * 64) + b']}], "outputs": [{"name": "q"}]}')]
    sample = f"http://{live_server.http_url}/v2/models/toy.sample/infer"
    for data in (b"[1.5]", b'["3"]', b"[true]", b"[18446744073709551616]"):
        bad.append(httpx.post(sample, content=b'{"inputs": [{"name": "n", "shape": [1], '
                              b'"datatype": "INT64", "data": ' + data + b"}]}",
                              headers=AUTH, timeout=10))
    bad.append(post(b'{"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", '
                    b'"data": [' + b",".join([b'"0"'] * 64) + b"]}]}"))
    for r in bad:
        assert r.status_code == 400, r.text
        assert isinstance(r.json()["error"], str)
    # Content-Type application/octet-stream is what generic V2 clients send with binary
    # tensors; a value beyond float32 in JSON data is the client's error, not inf.
    ok = post(b'{"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", '
              b'"data": [' + b",".join([b"0.5"] * 64) + b"]}]}",
              **{"Content-Type": "application/octet-stream"})
    assert ok.status_code == 200 and ok.json()["outputs"][0]["name"] == "energy"
    # A compressed body never inflates past the body limit (256 KiB in these tests).
    bomb = gzip.compress(b" " * (1 << 20))
    r = post(bomb, **{"Content-Encoding": "gzip"})
    assert r.status_code == 413 and "decompressed" in r.json()["error"]
    assert post(b"x", **{"Content-Encoding": "br"}).status_code == 415
    big = post(b'{"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", '
               b'"data": [1e39' + b",0" * 63 + b"]}]}")
    assert big.status_code == 400, big.text
