"""The serving stacks bench/serve.py (`--only peers`) measures meg against, each serving the
bundle's energy.onnx through its own ONNX Runtime session (one intra-op thread, like meg's
default on this machine). One server per process:

    .venv/bin/python bench/peer_servers.py {bare,litserve,kserve} --bundle models/digits --port N

* bare: FastAPI + uvicorn (httptools, uvloop) and one route, no middleware, no batching:
  orjson in and out, the ORT call on the event loop. The framework's ceiling.
  POST /energy {"inputs": [[...]]} -> {"energies": [...]}; POST /energy.bin with raw
  little-endian float32 rows -> raw float32 energies.
* litserve: a LitAPI with LitServe's own batching (max_batch_size, batch_timeout), one
  inference worker process. POST /predict {"inputs": [[...]]} -> {"energies": [...]};
  LitServe hands payloads to its worker through a queue, so JSON is its format.
* kserve: KServe's Python ModelServer (V1 and Open Inference Protocol V2 REST, gRPC off,
  one worker). It has no in-process batcher (KServe batches in its Kubernetes sidecar
  agent), so it serves each request as it comes. POST /v1/models/energy:predict
  {"instances": [[...]]}; POST /v2/models/energy/infer, JSON or binary tensors.

Not a test and not part of the service: nothing here is imported by `service`.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from fastapi import FastAPI, Request, Response

ROOT = Path(__file__).resolve().parents[1]

ENERGY_ONNX = "energy.onnx"
BATCH_SIZE = 256  # LitServe's max_batch_size: meg's default MEG_MAX_BATCH_SIZE
BATCH_TIMEOUT_S = 0.002  # LitServe's batch_timeout: meg's default MEG_MAX_DELAY_MS


def energy_session(bundle: Path) -> tuple[ort.InferenceSession, str]:
    """The bundle's energy network in ONNX Runtime with meg's default options, CPU."""
    sys.path.insert(0, str(ROOT))
    from service.engine.models import session_options
    from service.settings import Settings

    opts = session_options(Settings())
    sess = ort.InferenceSession(str(bundle / ENERGY_ONNX), sess_options=opts,
                                providers=["CPUExecutionProvider"])
    return sess, sess.get_inputs()[0].name


def run_bare(bundle: Path, port: int) -> None:
    sess, name = energy_session(bundle)
    dim = int(sess.get_inputs()[0].shape[1])
    app = FastAPI()

    @app.post("/energy")
    async def energy(request: Request) -> Response:
        x = np.asarray(orjson.loads(await request.body())["inputs"], dtype=np.float32)  # (B, d)
        e = sess.run(None, {name: x})[0]  # (B,)
        return Response(orjson.dumps({"energies": e}, option=orjson.OPT_SERIALIZE_NUMPY),
                        media_type="application/json")

    @app.post("/energy.bin")
    async def energy_bin(request: Request) -> Response:
        x = np.frombuffer(await request.body(), dtype="<f4").reshape(-1, dim)  # (B, d)
        e = sess.run(None, {name: x})[0]  # (B,)
        return Response(np.ascontiguousarray(e, dtype="<f4").tobytes(),
                        media_type="application/octet-stream")

    @app.get("/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                http="httptools", loop="uvloop")


class EnergyAPI(ls.LitAPI):  # type: ignore[misc]
    """LitServe's model API; at module level because LitServe's worker process is spawned
    and unpickles it."""

    def __init__(self, bundle: Path, **kw: Any):
        super().__init__(**kw)
        self.bundle = bundle

    def setup(self, device: str) -> None:
        self.sess, self.name = energy_session(self.bundle)

    # Unannotated on purpose: LitServe then hands over the parsed JSON body.
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        return np.asarray(request["inputs"], dtype=np.float32)  # (b, d)

    def batch(self, inputs: list[np.ndarray]) -> dict[str, Any]:
        return {"x": np.concatenate(inputs), "sizes": [len(x) for x in inputs]}

    def predict(self, x: Any) -> Any:
        if isinstance(x, dict):  # a batch of requests
            e = self.sess.run(None, {self.name: x["x"]})[0]  # (B,)
            return {"e": e, "sizes": x["sizes"]}
        return self.sess.run(None, {self.name: x})[0]

    def unbatch(self, output: dict[str, Any]) -> list[np.ndarray]:
        ends = np.cumsum(output["sizes"])
        return np.split(output["e"], ends[:-1])

    def encode_response(self, output: np.ndarray) -> dict[str, Any]:
        return {"energies": output.tolist()}


def run_litserve(bundle: Path, port: int) -> None:
    api = EnergyAPI(bundle, max_batch_size=BATCH_SIZE, batch_timeout=BATCH_TIMEOUT_S)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=port, num_api_servers=1, log_level="warning",
               generate_client_file=False)


def run_kserve(bundle: Path, port: int) -> None:
    # KServe's ModelServer reads its options from the command line when imported.
    sys.argv = [sys.argv[0], "--http_port", str(port), "--enable_grpc", "false",
                "--workers", "1"]
    import kserve
    from kserve import InferOutput, InferRequest, InferResponse

    class EnergyModel(kserve.Model):  # type: ignore[misc]
        def __init__(self, name: str):
            super().__init__(name)
            self.load()

        def load(self) -> bool:
            self.sess, self.input_name = energy_session(bundle)
            self.ready = True
            return True

        async def predict(self, payload: Any, headers: Any = None,
                          response_headers: Any = None) -> Any:
            if isinstance(payload, InferRequest):  # V2
                x = np.asarray(payload.inputs[0].as_numpy(), dtype=np.float32)  # (B, d)
                e = self.sess.run(None, {self.input_name: x})[0]  # (B,)
                binary = payload.use_binary_outputs  # `binary_data_output` in the request
                out = InferOutput(name="energy", shape=list(e.shape), datatype="FP32")
                out.set_data_from_numpy(e, binary_data=binary)
                return InferResponse(model_name=self.name, infer_outputs=[out],
                                     response_id=payload.id or str(uuid.uuid4()),
                                     use_binary_outputs=binary)
            x = np.asarray(payload["instances"], dtype=np.float32)  # V1: (B, d)
            return {"predictions": self.sess.run(None, {self.input_name: x})[0].tolist()}

    kserve.ModelServer(workers=1, enable_grpc=False, enable_docs_url=False,
                       enable_latency_logging=False).start([EnergyModel("energy")])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stack", choices=["bare", "litserve", "kserve"])
    p.add_argument("--bundle", type=Path, default=ROOT / "models" / "digits")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    {"bare": run_bare, "litserve": run_litserve, "kserve": run_kserve}[args.stack](
        args.bundle.resolve(), args.port)


if __name__ == "__main__":
    main()
