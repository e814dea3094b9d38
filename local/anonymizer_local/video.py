"""Videos in the ``anonymize`` command: one file at a time through the two-pass video pipeline,
with a progress bar in frames and an ETA on stderr.

    anonymize clip.mp4 -o out/                      # -> out/clip.mp4 (H.264/MP4), audio kept
    anonymize trip.mov -o out/ --audio drop --detect-every 2 --report
"""

from __future__ import annotations

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
        if target.resolve() == item.path.resolve():
            raise AnonymizerError("output would overwrite the original; choose another output folder")
        owner = claims.claim(target, str(item.path))
        if owner is not None:
            raise AnonymizerError(f"its output {target} is already the output of {owner}; nothing written")
        target.parent.mkdir(parents=True, exist_ok=True)
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
