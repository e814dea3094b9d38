"""Videos in the ``anonymize`` command: one file at a time through the two-pass video pipeline,
with a progress bar in frames and an ETA on stderr.

    anonymize clip.mp4 -o out/                      # -> out/clip.mp4 (H.264/MP4), audio kept
    anonymize trip.mov -o out/ --audio drop --detect-every 2 --report
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import TextIO

from anonymizer.errors import AnonymizerError
from anonymizer.options import Options
from anonymizer.video import io
from anonymizer.video.pipeline import VideoSettings, anonymize_video

from .files import InputFile, OutputClaims


def is_video_file(path: Path) -> bool:
    """By suffix, or by the bytes for a file whose suffix says nothing (the image path's sniffer)."""
    if path.suffix.lower() in io.VIDEO_EXTENSIONS:
        return True
    try:
        with path.open("rb") as f:
            return io.sniff_video(f.read(256)) is not None
    except OSError:
        return False


class FrameProgress:
    """``[#####.....] detect 120/480 frames  6.1 fps  ETA 1:58`` on one line, redrawn at most 5x/s.

    The two passes count as one run of 2 x frames: the ETA uses the pace of each pass so far
    (detection is the slow one, so the ETA shrinks when rendering starts)."""

    def __init__(self, name: str, stream: TextIO | None = None):
        self.name, self.stream = name, stream or sys.stderr
        self.started = time.perf_counter()
        self.phase_started: dict[str, tuple[float, int]] = {}  # phase -> (time, frames) at its start
        self.last_draw = 0.0

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        now = time.perf_counter()
        t0, done0 = self.phase_started.setdefault(
            phase, (self.started if phase == "detect" else now, 0 if phase == "detect" else done)
        )
        if now - self.last_draw < 0.2 and done != total:
            return
        self.last_draw = now
        fps = (done - done0) / (now - t0) if done > done0 and now > t0 else 0.0
        text = f"{self.name}: {phase} {done}/{total or '?'} frames {fps:5.1f} fps"
        if total:
            width = 24
            share = (done + (total if phase == "render" else 0)) / (2 * total)
            bar = "#" * int(width * share) + "." * (width - int(width * share))
            text = f"[{bar}] {text}"
            if fps > 0:
                left = (total - done) / fps
                if phase == "detect":  # the render pass follows: assume it runs at least as fast
                    left += total / fps
                text += f"  ETA {int(left // 60)}:{int(left % 60):02d}"
        print(f"\r{text}\033[K", end="", file=self.stream, flush=True)

    def close(self) -> None:
        print(file=self.stream)


def run_video(
    item: InputFile,
    output: Path,
    options: Options,
    settings: VideoSettings,
    *,
    anonymizer,
    claims: OutputClaims,
    report: bool = False,
    progress: bool = False,
) -> dict[str, int] | str:
    """One video into ``output``: its track counts, or the error message (nothing written then)."""
    target = output / Path(item.relative).with_suffix(".mp4")
    bar = FrameProgress(item.path.name) if progress else None
    try:
        claims.take(target, item.path)
        result = anonymize_video(anonymizer, item.path, target, options, settings, progress=bar)
        if report:
            data = json.dumps({"source": item.relative, **result}, indent=2, default=str)
            target.with_name(target.name + ".report.json").write_text(data)
    except AnonymizerError as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot write the output: {exc.strerror}"
    finally:
        if bar is not None:
            bar.close()
    return dict(result["counts"])


def run_video_workflow(
    videos: list[Path],
    output: Path,
    values: dict[str, str] | None = None,
    *,
    segment_seconds: float = 60.0,
    single_seconds: float = 120.0,
    workers: int = 2,
    stream: TextIO | None = None,
    verbose: bool = False,
) -> dict[str, int]:
    """``anonymize local-run`` for videos: the video state machine's own definition walked
    locally (plan, the segments side by side, join) with the video function's steps, against
    moto's S3 in this process. Results land in ``output`` as the output bucket holds them:
    ``<name>`` and ``<name>.report.json`` (a failure: the failure report only)."""
    import boto3
    from moto import mock_aws

    from anonymizer.aws.storage import option_metadata
    from anonymizer.pipeline import Anonymizer
    from anonymizer.video import steps

    from . import state_machine as local_run

    stream = stream or sys.stderr
    config = steps.VideoFlowConfig(
        output_bucket="local-video-out",
        work_bucket="local-video-work",
        segment_seconds=segment_seconds,
        single_seconds=single_seconds,
    )
    anonymizer = Anonymizer()
    done = failed = 0
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        for bucket in ("local-video-in", config.output_bucket, config.work_bucket):
            s3.create_bucket(Bucket=bucket)
        for path in videos:
            key = path.name
            s3.upload_file(str(path), "local-video-in", key, ExtraArgs={"Metadata": option_metadata(values or {})})
            head = s3.head_object(Bucket="local-video-in", Key=key)
            data = steps.execution_input("local-video-in", key, None, head["ETag"].strip('"'), head["ContentLength"])
            walked: list[str] = []
            started = time.perf_counter()

            def trace(name: str, walked: list[str] = walked, started: float = started) -> None:
                walked.append(name)
                if verbose:
                    print(f"  {time.perf_counter() - started:7.1f} s  {name}", file=stream, flush=True)

            def invoke(payload: dict) -> dict:
                return steps.run_step(payload, s3, config, lambda: anonymizer)

            try:
                result = local_run.run(local_run.load_definition(), data, invoke, workers=workers, trace=trace)
                summary = result["result"]["result"]
                s3.download_file(config.output_bucket, key, str(output / key))
                done += 1
                print(
                    f"{path}: {summary['parts']} segment(s), {summary['frames']} frames, "
                    f"{summary['counts']} in {time.perf_counter() - started:.1f} s",
                    file=stream,
                )
            except local_run.StateMachineFailed as exc:
                failed += 1
                print(f"{path}: failed, nothing published ({exc.cause or exc.error})", file=stream)
            finally:
                with contextlib.suppress(Exception):
                    s3.download_file(config.output_bucket, key + ".report.json", str(output / (key + ".report.json")))
            print(f"  states: {' -> '.join(_runs(walked))}", file=stream)
    return {"ok": done, "failed": failed}


def _runs(names: list[str]) -> list[str]:
    """``Segment, Segment, Segment`` -> ``Segment x3`` for the trace line."""
    out: list[str] = []
    for name in names:
        if out and out[-1].split(" x")[0] == name:
            count = int(out[-1].split(" x")[1]) + 1 if " x" in out[-1] else 2
            out[-1] = f"{name} x{count}"
        else:
            out.append(name)
    return out
