"""Running an ONNX network on CPU fast: small inputs side by side, big or lone ones wide.

Measured on 2 cores (docs/BENCHMARKS.md): small inputs (the spots of a screened pass) do not
speed up with onnxruntime's intra-op threads at all, so several of them run at once, each on a
single-threaded session, from a pool with one worker per vCPU. A big input, or one that runs
alone, uses a second session with one intra-op thread per vCPU. Both sessions give the same
numbers bit for bit, so how an input ran never changes an answer. (Cutting big inputs into
pieces for the pool was tried: pieces need 128 px of context each to keep the face figures,
which costs more than it gains.)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import numpy as np

from .errors import DetectionError

ALIGN = 32  # the networks' coarsest stride: a crop cut on this grid sees what the whole input sees
WIDE_MIN_PIXELS = 400_000  # inputs this big run on all cores at once (intra-op threads pay off)


def default_threads() -> int:
    """Threads from the Lambda memory size (vCPUs scale with memory), else the CPU affinity."""
    memory = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
    if memory:
        return max(1, min(6, round(int(memory) / 1769)))
    return max(1, len(os.sched_getaffinity(0)))


def read_model(path: Path, sha256: str, name: str) -> bytes:
    """A model file's bytes, which must match its card's sha256."""
    try:
        model_bytes = path.read_bytes()
    except OSError as exc:
        raise DetectionError(f"{name} model missing: {path.name}") from exc
    digest = hashlib.sha256(model_bytes).hexdigest()
    if digest != sha256:
        raise DetectionError(f"{name} model {path.name} does not match its card (sha256 {digest[:12]})")
    return model_bytes


def load_session(model_bytes: bytes, threads: int):
    """A CPU session; the same answers on every x86 CPU.

    Our int8 models multiply uint8 activations by int8 weights. On x86 CPUs without VNNI (AVX2,
    AVX-512 before Cascade Lake) onnxruntime does that with VPMADDUBSW, whose 16-bit sums
    saturate: on an AMD EPYC with AVX2 only, faces on street-masks-dev fell from R 0.870 / AP50
    0.848 (Intel with VNNI) to 0.840 / 0.824. ``session.x64quantprecision`` makes onnxruntime
    use exact kernels there (weights outside [-64, 63]); with it both machines give 0.870 / 0.848.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.x64quantprecision", "1")  # no int8 saturation without VNNI
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


@cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="network")


class Network:
    """One ONNX model; ``run`` takes any number of inputs and runs them side by side."""

    def __init__(self, path: Path, sha256: str, name: str, threads: int | None = None):
        self.name = name
        self.workers = threads or default_threads()
        model_bytes = read_model(path, sha256, name)
        self.session = load_session(model_bytes, 1)  # for runs side by side
        self.wide = load_session(model_bytes, self.workers) if self.workers > 1 else self.session  # for one run alone

    def run(self, names: list[str], blobs: list[np.ndarray]) -> list[list[np.ndarray]]:
        """Outputs ``names`` for each NCHW blob (sides multiples of ``ALIGN``), as one run would give."""
        return self.start(names, blobs)()

    def start(self, names: list[str], blobs: list[np.ndarray]) -> Callable[[], list[list[np.ndarray]]]:
        """``run``, started: small inputs go to the pool, big ones (or a lone one) run here, wide.

        The returned call waits for the outputs, so several networks' inputs started before any
        is awaited share the cores.
        """
        alone = self.workers == 1 or len(blobs) == 1
        wide = [alone or blob.shape[2] * blob.shape[3] >= WIDE_MIN_PIXELS for blob in blobs]
        order = sorted(range(len(blobs)), key=lambda i: -blobs[i].size)  # biggest first: no long tail
        pending = {
            i: _pool(self.workers).submit(self._run, self.session, names, blobs[i]) for i in order if not wide[i]
        }
        done = {i: self._run(self.wide, names, blobs[i]) for i in order if wide[i]}

        def outputs() -> list[list[np.ndarray]]:
            return [done[i] if wide[i] else pending[i].result() for i in range(len(blobs))]

        return outputs

    def _run(self, session, names: list[str], blob: np.ndarray) -> list[np.ndarray]:
        try:
            return session.run(names, {"input": blob})
        except Exception as exc:  # onnxruntime raises its own types; never let an image through
            raise DetectionError(f"{self.name} detector failed to run") from exc
