"""Open Inference Protocol over gRPC, driven by tritonclient.grpc against the live server's
gRPC port: probes, metadata, inference with raw and typed contents, the same numbers as
the native endpoints, status codes, and the committed descriptor against the .proto."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException
from v2_helpers import API_KEY, LiveServer, free_port

from service.main import create_app
from service.settings import Settings
from service.v2 import descriptor
from service.v2.grpc_server import GRPC_STATUS, InferenceService, M

KEY = {"x-api-key": API_KEY}


@pytest.fixture(scope="module")
def tc(live_server: LiveServer) -> tg.InferenceServerClient:
    return tg.InferenceServerClient(live_server.grpc_url)


def _infer(tc: tg.InferenceServerClient, model: str, inputs: dict[str, np.ndarray],
           outputs: list[str] | None = None, **kw: object) -> tg.InferResult:
    ins = []
    for name, a in inputs.items():
        t = tg.InferInput(name, list(a.shape), {np.float32: "FP32", np.int64: "INT64"}[a.dtype.type])
        t.set_data_from_numpy(a)  # raw_input_contents
        ins.append(t)
    outs = [tg.InferRequestedOutput(o) for o in outputs] if outputs else None
    return tc.infer(model, ins, outputs=outs, headers=dict(KEY), **kw)


def test_probes_and_metadata(tc: tg.InferenceServerClient) -> None:
    assert tc.is_server_live() and tc.is_server_ready()
    meta = tc.get_server_metadata(headers=KEY, as_json=True)
    assert meta["name"] == "meg" and "binary_tensor_data" in meta["extensions"]
    m = tc.get_model_metadata("digits.anomaly", headers=KEY, as_json=True)
    assert m["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "64"]}]
    assert {"score", "percentile", "is_anomaly"} <= {o["name"] for o in m["outputs"]}
    assert tc.is_model_ready("toy.sample", headers=KEY)
    assert not tc.is_model_ready("nope", headers=KEY)
    with pytest.raises(InferenceServerException) as e:
        tc.get_server_metadata()  # no key
    assert e.value.status() == str(grpc.StatusCode.UNAUTHENTICATED)


def test_infer_matches_native(tc: tg.InferenceServerClient, live_server: LiveServer) -> None:
    native = live_server.native
    x = np.random.default_rng(1).random((6, 64), dtype=np.float32)
    energy = _infer(tc, "digits.energy", {"x": x}).as_numpy("energy")
    want = native.post("/energy", json={"model": "digits", "inputs": x.tolist()}).json()
    np.testing.assert_array_equal(energy, np.asarray(want["energies"], dtype=np.float32))

    a = _infer(tc, "digits.anomaly", {"x": x}, ["is_anomaly", "score"])
    rows = native.post("/anomaly", json={"model": "digits", "inputs": x.tolist()}).json()
    np.testing.assert_allclose(a.as_numpy("score"), [r["score"] for r in rows["results"]],
                               rtol=1e-6)
    assert a.as_numpy("is_anomaly").tolist() == [r["is_anomaly"] for r in rows["results"]]
    assert a.as_numpy("percentile") is None  # not asked for

    args = {"n": np.array([4], dtype=np.int64), "seed": np.array([7], dtype=np.int64)}
    s = _infer(tc, "toy.sample", args)
    ref = native.post("/sample", json={"model": "toy", "n": 4, "seed": 7}).json()
    np.testing.assert_array_equal(s.as_numpy("x"), np.asarray(ref["samples"], dtype=np.float32))
    assert s.get_response(as_json=True)["parameters"]["seed"]["int64_param"] == "7"
    gen = _infer(tc, "toy.generate", {"z": s.as_numpy("z")}).as_numpy("x")
    np.testing.assert_array_equal(gen, s.as_numpy("x"))


def test_typed_contents(live_server: LiveServer) -> None:
    """A client that sends `contents` instead of raw bytes (the proto's other form)."""
    x = np.random.default_rng(2).random((3, 2), dtype=np.float32)
    req = M.ModelInferRequest(model_name="toy")
    t = req.inputs.add(name="x", datatype="FP32", shape=[3, 2])
    t.contents.fp32_contents.extend(x.reshape(-1).tolist())
    with grpc.insecure_channel(live_server.grpc_url) as ch:
        call = ch.unary_unary(f"/{descriptor.SERVICE}/ModelInfer",
                              request_serializer=M.ModelInferRequest.SerializeToString,
                              response_deserializer=M.ModelInferResponse.FromString)
        resp = call(req, metadata=tuple(KEY.items()), timeout=30)
    got = np.frombuffer(resp.raw_output_contents[0], dtype="<f4")
    want = live_server.native.post("/energy", json={"model": "toy", "inputs": x.tolist()})
    np.testing.assert_array_equal(got, np.asarray(want.json()["energies"], dtype=np.float32))


def test_status_codes(tc: tg.InferenceServerClient) -> None:
    x = np.zeros((2, 64), dtype=np.float32)
    cases = [("nope", {"x": x}, grpc.StatusCode.NOT_FOUND),
             ("digits", {"x": np.zeros((2, 5), dtype=np.float32)},
              grpc.StatusCode.INVALID_ARGUMENT),
             ("toy.sample", {"n": np.array([0], dtype=np.int64)},
              grpc.StatusCode.INVALID_ARGUMENT)]
    for model, inputs, code in cases:
        with pytest.raises(InferenceServerException) as e:
            _infer(tc, model, inputs)
        assert e.value.status() == str(code), (model, e.value.message())
    assert set(GRPC_STATUS.values()) == {
        grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def test_descriptor_is_the_proto_and_wire_compatible_with_triton() -> None:
    pytest.importorskip("grpc_tools")
    assert descriptor.compile_proto() == descriptor.committed()
    # Every field meg declares has the number and type of Triton's own definition.
    from tritonclient.grpc import service_pb2 as triton

    ours = M.ModelInferRequest.DESCRIPTOR.file
    for name, msg in ours.message_types_by_name.items():
        theirs = triton.DESCRIPTOR.message_types_by_name[name]
        for d, t in [(msg, theirs), *zip(msg.nested_types, [
                theirs.nested_types_by_name[n.name] for n in msg.nested_types], strict=True)]:
            for f in d.fields:
                tf = t.fields_by_name[f.name]
                assert (f.number, f.type) == (tf.number, tf.type), (name, f.name)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_grpc_lives_and_dies_with_the_lifespan(toy_only: Path) -> None:
    """MEG_GRPC_PORT starts the gRPC server in the app's lifespan, on its loop and engine;
    shutdown closes the port. MEG_GRPC_PORT=0 starts none."""
    port = free_port()
    settings = Settings(models_dir=toy_only, log_level="WARNING", grpc_port=port)
    app = create_app(settings)
    live = M.ServerLiveRequest()

    async def server_live() -> bool:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_unary(f"/{descriptor.SERVICE}/ServerLive",
                                  request_serializer=M.ServerLiveRequest.SerializeToString,
                                  response_deserializer=M.ServerLiveResponse.FromString)
            return bool((await call(live, timeout=5)).live)

    async with app.router.lifespan_context(app):
        assert app.state.grpc_port == port
        assert await server_live()
        # The same engine as HTTP: a model the engine holds is ready over gRPC.
        assert await InferenceService(app.state.engine, "x", []).model_ready(
            M.ModelReadyRequest(name="toy.sample"), None) == M.ModelReadyResponse(ready=True)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await server_live()
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE

    off = create_app(Settings(models_dir=toy_only, log_level="WARNING"))
    async with off.router.lifespan_context(off):
        assert not hasattr(off.state, "grpc_port")


def test_calls_are_counted_by_method_model_and_code(tc: tg.InferenceServerClient,
                                                    live_server: LiveServer) -> None:
    from svc_helpers import metric_value

    def scrape() -> str:
        r = live_server.native.get("/metrics")
        r.raise_for_status()
        return r.text

    before = scrape()
    _infer(tc, "digits", {"x": np.zeros((1, 64), dtype=np.float32)})
    with pytest.raises(InferenceServerException):
        _infer(tc, "digits", {"x": np.zeros((1, 5), dtype=np.float32)})
    with pytest.raises(InferenceServerException):
        _infer(tc, "nope", {"x": np.zeros((1, 64), dtype=np.float32)})
    with pytest.raises(InferenceServerException):  # no key
        tc.infer("digits", [tg.InferInput("x", [1, 64], "FP32").set_data_from_numpy(
            np.zeros((1, 64), dtype=np.float32))])
    after = scrape()

    def delta(**labels: str) -> float:
        return (metric_value(after, "meg_grpc_requests_total", method="ModelInfer", **labels)
                - metric_value(before, "meg_grpc_requests_total", method="ModelInfer", **labels))

    assert delta(model="digits", code="OK") == 1
    assert delta(model="digits", code="INVALID_ARGUMENT") == 1
    assert delta(model="", code="NOT_FOUND") == 1
    assert delta(model="", code="UNAUTHENTICATED") == 1
    assert (metric_value(after, "meg_grpc_request_duration_seconds_count", method="ModelInfer",
                         model="digits")
            - metric_value(before, "meg_grpc_request_duration_seconds_count",
                           method="ModelInfer", model="digits")) == 2
