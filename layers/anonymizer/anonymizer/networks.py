"""Running an ONNX network on CPU fast: single-threaded runs side by side, big inputs in pieces.

Measured on 2 cores (docs/BENCHMARKS.md): a 1088x1920 pass of the joint network takes ~220 ms
with onnxruntime's two intra-op threads, but two single-threaded runs of its halves, side by
side, take ~170 ms: a big input falls out of the CPU caches, and small inputs do not speed up
with intra-op threads at all. So every session runs single-threaded, one run per vCPU at a time
from a shared pool, and an input worth splitting is cut into overlapping pieces whose outputs
are stitched back into the whole pass's output (the network is fully convolutional).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import numpy as np

from .errors import DetectionError

OUTPUT_STRIDE = 4  # every output of our networks is at 1/4 of the input
ALIGN = 32  # the networks' coarsest stride: pieces cut on this grid see what the whole input sees
PIECE_MARGIN = 128  # input px of context a piece keeps beyond its own part (64 cost 1.5 points of face AP50)
PIECE_SIDE = 2048  # pieces are at most about this long (bigger runs fall out of the caches)
SPLIT_MIN_PIXELS = 400_000  # smaller inputs run whole: the margins would cost more than they gain


def default_threads() -> int:
    """Threads from the Lambda memory size (vCPUs scale with memory), else the CPU affinity."""
    memory = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
    if memory:
        return max(1, min(6, round(int(memory) / 1769)))
    return max(1, len(os.sched_getaffinity(0)))


def load_session(path: Path, sha256: str, name: str):
    """A single-threaded onnxruntime session for a model file that must match its card's sha256."""
    import onnxruntime as ort

    try:
        model_bytes = path.read_bytes()
    except OSError as exc:
        raise DetectionError(f"{name} model missing: {path.name}") from exc
    digest = hashlib.sha256(model_bytes).hexdigest()
    if digest != sha256:
        raise DetectionError(f"{name} model {path.name} does not match its card (sha256 {digest[:12]})")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # parallel runs instead (module docstring)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


@cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="network")


def spans(length: int, count: int) -> list[tuple[int, int]]:
    """``count`` [start, end) parts of ``length`` with ends on the ``ALIGN`` grid."""
    cells = length // ALIGN
    count = max(1, min(count, cells))
    bounds = [round(i * cells / count) * ALIGN for i in range(count)] + [length]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def pieces(height: int, width: int, workers: int) -> list[tuple[slice, slice]]:
    """The parts (rows, columns) an input of this size runs as; margins are added by the caller."""
    if height * width < SPLIT_MIN_PIXELS:
        return [(slice(0, height), slice(0, width))]
    ny, nx = math.ceil(height / PIECE_SIDE), math.ceil(width / PIECE_SIDE)
    if ny * nx < workers:  # one piece per worker, cut across the long side
        ny, nx = (workers, 1) if height > width else (1, workers)
    return [(slice(y0, y1), slice(x0, x1)) for y0, y1 in spans(height, ny) for x0, x1 in spans(width, nx)]


class Network:
    """One ONNX model; ``run`` takes any number of inputs and runs them, in pieces, side by side."""

    def __init__(self, path: Path, sha256: str, name: str, threads: int | None = None):
        self.name = name
        self.session = load_session(path, sha256, name)
        self.workers = threads or default_threads()

    def run(self, names: list[str], blobs: list[np.ndarray]) -> list[list[np.ndarray]]:
        """Outputs ``names`` for each NCHW blob (sides multiples of ``ALIGN``), as one run would give."""
        return self.start(names, blobs)()

    def start(self, names: list[str], blobs: list[np.ndarray]) -> Callable[[], list[list[np.ndarray]]]:
        """``run``, started on the pool; the returned call waits for the outputs.

        Several networks' runs started before any is awaited share the cores (one single-threaded
        run cannot keep two cores busy).
        """
        jobs = []  # (blob index, piece input, its part in output cells, where that part sits in the piece's output)
        for b, blob in enumerate(blobs):
            height, width = blob.shape[2:]
            for rows, cols in pieces(height, width, self.workers):
                y0, y1 = max(0, rows.start - PIECE_MARGIN), min(height, rows.stop + PIECE_MARGIN)
                x0, x1 = max(0, cols.start - PIECE_MARGIN), min(width, cols.stop + PIECE_MARGIN)
                part = tuple(slice(s.start // OUTPUT_STRIDE, s.stop // OUTPUT_STRIDE) for s in (rows, cols))
                inner = tuple(
                    slice((s.start - o) // OUTPUT_STRIDE, (s.stop - o) // OUTPUT_STRIDE)
                    for s, o in ((rows, y0), (cols, x0))
                )
                whole = (y0, y1, x0, x1) == (0, height, 0, width)
                jobs.append((b, blob if whole else np.ascontiguousarray(blob[:, :, y0:y1, x0:x1]), part, inner))
        if self.workers > 1:  # biggest first: the last piece to finish is a small one
            order = sorted(range(len(jobs)), key=lambda i: -jobs[i][1].size)
            submitted = {i: _pool(self.workers).submit(self._run, names, jobs[i][1]) for i in order}
            futures = [submitted[i] for i in range(len(jobs))]
        else:
            done = [self._run(names, job[1]) for job in jobs]

        def outputs() -> list[list[np.ndarray]]:
            results = [f.result() for f in futures] if self.workers > 1 else done
            return self._stitch(blobs, jobs, results)

        return outputs

    @staticmethod
    def _stitch(blobs: list[np.ndarray], jobs: list, results: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        stitched: list[list[np.ndarray] | None] = [None] * len(blobs)
        for (b, piece, part, inner), outputs in zip(jobs, results, strict=True):
            if piece is blobs[b]:
                stitched[b] = outputs
                continue
            if stitched[b] is None:
                height, width = blobs[b].shape[2:]
                shape = (height // OUTPUT_STRIDE, width // OUTPUT_STRIDE)
                stitched[b] = [np.empty((*o.shape[:2], *shape), o.dtype) for o in outputs]
            for whole, out in zip(stitched[b], outputs, strict=True):
                whole[:, :, part[0], part[1]] = out[:, :, inner[0], inner[1]]
        return stitched

    def _run(self, names: list[str], blob: np.ndarray) -> list[np.ndarray]:
        try:
            return self.session.run(names, {"input": blob})
        except Exception as exc:  # onnxruntime raises its own types; never let an image through
            raise DetectionError(f"{self.name} detector failed to run") from exc
