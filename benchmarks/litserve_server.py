"""LitServe serving a trainlab ONNX export with LitServe's recommended CPU settings, for serve_speed.py:

    python benchmarks/litserve_server.py best.onnx --workers 2 --port 8001 [--fast-queue]

Batching on (up to 16 inputs, waiting 5 ms for them), ``--workers`` inference workers on the CPU device,
``--fast-queue``: LitServe's ZeroMQ queue between its API server and its workers (its option for speed),
ONNX Runtime with one thread each; images decoded as trainlab's server and the plain endpoint decode them
(``read_image``), one answer per request as the plain endpoint's. The API class is at the top of a module
of its own: LitServe pickles it into its worker processes.
"""

import argparse
import io
import json

import litserve
import numpy as np
import onnxruntime

from trainlab.dataloader.kinds.image import read_image
from trainlab.dataloader.spec import InputSpec
from trainlab.inference import INPUT_SPEC_KEY


class OnnxAPI(litserve.LitAPI):
    def __init__(self, onnx: str):
        super().__init__(max_batch_size=16, batch_timeout=0.005)
        self.onnx = onnx

    def setup(self, device: str) -> None:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(self.onnx, options, providers=["CPUExecutionProvider"])
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.spec = InputSpec.from_dict(json.loads(metadata[INPUT_SPEC_KEY]))
        self.input_name = self.session.get_inputs()[0].name

    def decode_request(self, request) -> np.ndarray:  # a multipart form, as LitServe reads it
        return read_image(io.BytesIO(request["file"].file.read()), self.spec.inputs["input_shape"]).numpy()

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        logits = self.session.run(None, {self.input_name: x})[0]
        exp = np.exp(logits - logits.max(-1, keepdims=True))
        return exp / exp.sum(-1, keepdims=True)

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, probabilities: np.ndarray) -> dict:
        index = int(probabilities.argmax())
        return {
            "label": self.spec.class_names[index],
            "class_index": index,
            "probabilities": probabilities.tolist(),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("onnx")
    parser.add_argument("--workers", type=int, default=1, help="inference workers per device (the CPU)")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--fast-queue", action="store_true", help="ZeroMQ between API server and workers")
    args = parser.parse_args()
    server = litserve.LitServer(
        OnnxAPI(args.onnx),
        accelerator="cpu",
        workers_per_device=args.workers,
        max_batch_size=16,
        batch_timeout=0.005,
        fast_queue=args.fast_queue,
    )
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
