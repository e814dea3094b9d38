"""Video speed and memory: frames per second at 720p and 1080p (faces and plates on) and peak
memory, on synthetic clips (a camera panning over a labelled dashcam frame of ../shared/data,
or a flat picture without it). Each run is a fresh process, so ``ru_maxrss`` is that run's peak.

    .venv/bin/python tools/video_bench.py                       # 720p and 1080p, 4 s each
    .venv/bin/python tools/video_bench.py --sizes 1080p --seconds 20 60   # memory vs length
    .venv/bin/python tools/video_bench.py --detect-every 1      # detector on every frame (default: DETECT_EVERY)
    .venv/bin/python tools/video_bench.py --clips tests/assets/video/*.mp4   # real clips
    .venv/bin/python tools/video_bench.py --workflow --minutes 20 --detect-every 5   # local state machine

Prints one line per run: size, frames, detect_every, fps end to end, fps of pass 1
(decode + detect), peak RSS in MiB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from anonymizer.video import DETECT_EVERY

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160)}
PHOTO = ROOT.parent / "shared" / "data" / "plates" / "romania-dashcam" / "images" / "nightride_type3_001_t5.jpg"


def make_clip(path: Path, size: tuple[int, int], frames: int, fps: int = 25, audio: bool = False) -> None:
    """Encode a pan over the photo at ``size`` (streamed: one frame in memory), with a tone."""
    import av
    import cv2
    import numpy as np

    w, h = size
    photo = cv2.imread(str(PHOTO)) if PHOTO.exists() else np.full((720, 1280, 3), 127, np.uint8)
    photo = cv2.resize(photo, (int(w * 1.2), int(h * 1.2)))
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23"}
        tone = None
        if audio:
            tone = out.add_stream("aac", rate=48000)
            tone.layout = "mono"
        samples = 0
        for i in range(frames):
            x = int((photo.shape[1] - w) * (0.5 + 0.5 * np.sin(i / 50)))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(photo[:h, x : x + w]), format="bgr24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
            while tone is not None and samples < (i + 1) * 48000 // fps:
                t = (samples + np.arange(1024)) / 48000
                chunk = av.AudioFrame.from_ndarray(
                    (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :], format="fltp", layout="mono"
                )
                chunk.sample_rate, chunk.pts = 48000, samples
                samples += 1024
                for packet in tone.encode(chunk):
                    out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
        if tone is not None:
            for packet in tone.encode(None):
                out.mux(packet)


def run_workflow(args: argparse.Namespace) -> int:
    """A long file through the local state machine: segments, parallel runs, join, frame count."""
    import time

    sys.path.insert(0, str(ROOT / "local"))
    from anonymizer.video.segments import scan
    from anonymizer_local.video import run_video_workflow

    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "long.mp4"
        t0 = time.perf_counter()
        make_clip(clip, (w, h), int(args.minutes * 60 * 25), audio=True)
        frames_in = len(scan(clip)[0])
        print(
            f"made {args.minutes} min {w}x{h} clip with audio: {frames_in} frames in {time.perf_counter() - t0:.0f} s"
        )
        out = Path(tmp) / "out"
        out.mkdir()
        t0 = time.perf_counter()
        result = run_video_workflow(
            [clip],
            out,
            {"detect_every": str(args.detect_every)},
            segment_seconds=args.segment_seconds,
            single_seconds=0,
            workers=args.workers,
            stream=sys.stdout,
            verbose=True,
        )
        seconds = time.perf_counter() - t0
        frames_out = len(scan(out / "long.mp4")[0]) if (out / "long.mp4").exists() else 0
        report = json.loads((out / "long.mp4.report.json").read_text())
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"workflow: {result}, parts {report.get('parts')}, frames in {frames_in} out {frames_out} "
            f"({'identical' if frames_in == frames_out else 'DIFFERENT'}), {seconds:.0f} s "
            f"({frames_in / seconds:.1f} fps with {args.workers} workers), peak RSS {peak:.0f} MiB"
        )
    return 0 if frames_in == frames_out else 1


def run_one(clip: Path, detect_every: int) -> dict:
    """In this (fresh) process: anonymize the clip, faces and plates on."""
    from anonymizer.options import Options
    from anonymizer.pipeline import Anonymizer
    from anonymizer.video.pipeline import VideoSettings, anonymize_video

    anonymizer = Anonymizer()
    anonymizer.preload(("face", "plate"))
    with tempfile.TemporaryDirectory() as tmp:
        report = anonymize_video(
            anonymizer, clip, Path(tmp) / "out.mp4", Options(), VideoSettings(detect_every=detect_every)
        )
    t = report["timings_ms"]
    frames = report["video"]["frames"]
    return {
        "frames": frames,
        "looked": report["frames_looked"],
        "fps": report["fps"],
        "fps_pass1": round(frames / (t["pass1"] / 1000), 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "timings_ms": t,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["720p", "1080p"], choices=sorted(SIZES))
    parser.add_argument("--seconds", nargs="+", type=float, default=[4.0])
    parser.add_argument("--detect-every", type=int, default=DETECT_EVERY)
    parser.add_argument("--clips", nargs="+", type=Path, help="real clips instead of the synthetic pan")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one clip in this process
    parser.add_argument("--workflow", action="store_true", help="a long clip through the local state machine")
    parser.add_argument("--minutes", type=float, default=20.0, help="--workflow: clip length")
    parser.add_argument("--size", default="320x180", help="--workflow: frame size WxH")
    parser.add_argument("--segment-seconds", type=float, default=120.0, help="--workflow: segment length")
    parser.add_argument("--workers", type=int, default=2, help="--workflow: segments side by side")
    args = parser.parse_args(argv)
    if args.workflow:
        return run_workflow(args)
    if args.one:
        print(json.dumps(run_one(Path(args.one), args.detect_every)))
        return 0
    print("size   frames  every  looked  fps   fps(pass1)  peak_rss_MiB")
    with tempfile.TemporaryDirectory() as tmp:
        runs = [(clip.name, clip) for clip in args.clips or []]
        for name in [] if args.clips else args.sizes:
            for seconds in args.seconds:
                clip = Path(tmp) / f"{name}-{seconds}.mp4"
                make_clip(clip, SIZES[name], int(seconds * 25))
                runs.append((name, clip))
        for name, clip in runs:
            cmd = [sys.executable, __file__, "--one", str(clip), "--detect-every", str(args.detect_every)]
            result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            print(
                f"{name:6} {result['frames']:6}  {args.detect_every:5}  {result['looked']:6}  {result['fps']:5.1f} "
                f"{result['fps_pass1']:10.1f}  {result['peak_rss_mib']:10.0f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
