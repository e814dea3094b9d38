#!/usr/bin/env python3
"""Box labels for a real video clip, made semi-automatically and audited by eye.

    python tools/label_video.py cut SRC DST --start 67 --seconds 22      # stream copy from a keyframe
    python tools/label_video.py propose CLIP /tmp/clip.proposal.json     # detector + tracker (slow)
    python tools/label_video.py sheet CLIP /tmp/clip.proposal.json /tmp/sheet.png --first 0 --last 40
    python tools/label_video.py apply /tmp/clip.proposal.json CLIP.audit.json CLIP.labels.json
    python tools/label_video.py sheet CLIP CLIP.labels.json /tmp/final.png   # look again

Why semi-automatic: boxing every face on every frame by hand is slow and inconsistent; the image
detector at high recall (the frame upscaled, a low score floor) proposes boxes that a person only
has to judge. The detector under test is *not* the judge: the audit file (kept beside the labels,
so the labels can be rebuilt and reviewed) says, per object, on which frames its face is visible
and fixes boxes by hand where the proposal is wrong or missing.

Proposal: per frame, detections of the upscaled frame at ``--min-score``, linked into tracks by
``anonymizer.video.tracking.Tracker``, gaps filled by linear interpolation (``track_boxes`` with
no padding). Audit (JSON): ``{"objects": [{"id": 1, "tracks": [3, 7], "frames": [[first, last],
...], "ignore": [[first, last], ...], "boxes": {"frame": [x1, y1, x2, y2]}}], "note": "..."}``.
An object's box on a frame is, in order: a hand box of that frame, a proposal box of one of its
tracks (a detected one before a gap-filled one), else interpolated between the nearest known
boxes (held constant past the ends). Frames in ``ignore`` get ``"ignore": true`` (a face too
small or too turned away to recognise: excluded from recall). Labels: ``{"clip", "made": {counts},
"note", "frames": [[{"id", "label", "box"[, "ignore"]}, ...], ...]}``, one frame per line.
"""

from __future__ import annotations

import argparse
import json
import sys
from bisect import bisect_left
from pathlib import Path

Box = tuple[float, float, float, float]


def cut(src: Path, dst: Path, start: float, seconds: float) -> int:
    """Copy the video packets (no re-encoding) from the keyframe at or after ``start`` s up to the
    keyframe at or after ``start + seconds``; timestamps start at 0, audio and tags are dropped.
    Returns the frames written."""
    import av

    with av.open(str(src)) as inp:
        stream = inp.streams.video[0]
        tb = stream.time_base
        packets = [p for p in inp.demux(stream) if p.size and p.dts is not None]
    keys = [p for p in packets if p.is_keyframe and p.pts * tb >= start]
    begin = packets.index(keys[0])
    ends = [p for p in keys if p.pts * tb >= keys[0].pts * tb + seconds]
    end = packets.index(ends[0]) if ends else len(packets)
    chosen, offset = packets[begin:end], keys[0].pts
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        o = out.add_stream_from_template(inp.streams.video[0])
        for p in chosen:
            p.pts, p.dts = p.pts - offset, p.dts - offset
            p.stream = o
            out.mux(p)
    return len(chosen)


def propose(clip: Path, scale: float, min_score: float) -> dict:
    """The detector's boxes on every frame (upscaled ``scale`` times), linked and gap-filled."""
    import cv2

    from anonymizer.options import Options
    from anonymizer.pipeline import Anonymizer
    from anonymizer.video import io
    from anonymizer.video.tracking import Tracker, TrackSettings, track_boxes

    anonymizer, options = Anonymizer(), Options(targets=("face",))
    settings = TrackSettings(pad=0, size_window=0)
    tracker, tracks, frames = Tracker(settings), [], 0
    for frame in io.read_frames(clip):
        up = cv2.resize(frame.pixels, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        dets = anonymizer.detect_pixels(up, options, min_score=min_score)
        tracks += tracker.update(frame.index, [(d.label, d.score, tuple(v / scale for v in d.box)) for d in dets])
        frames += 1
    tracks += tracker.finish()
    out = []
    for t in sorted(tracks, key=lambda t: t.id):
        detected = dict(zip(t.frames, t.scores, strict=True))
        boxes = track_boxes(t, settings, 0, frames)
        out.append(
            {
                "track": t.id,
                "max_score": round(max(t.scores), 3),
                "boxes": {f: [round(v, 1) for v in b] for f, b in sorted(boxes.items())},
                "scores": {f: round(s, 3) for f, s in detected.items()},  # frames with a detection
            }
        )
    return {"clip": clip.name, "frames": frames, "scale": scale, "min_score": min_score, "tracks": out}


def _spans(spans: list[list[int]]) -> set[int]:
    return {f for a, b in spans for f in range(a, b + 1)}


def _fill(known: dict[int, Box], frames: list[int]) -> dict[int, Box]:
    """Boxes on ``frames``: known ones kept, the rest interpolated between the nearest known
    frames, held constant past the first and the last."""
    keys = sorted(known)
    out = {}
    for f in frames:
        i = bisect_left(keys, f)
        if i < len(keys) and keys[i] == f:
            out[f] = known[f]
        elif i == 0:
            out[f] = known[keys[0]]
        elif i == len(keys):
            out[f] = known[keys[-1]]
        else:
            a, b = keys[i - 1], keys[i]
            t = (f - a) / (b - a)
            out[f] = tuple(p + (q - p) * t for p, q in zip(known[a], known[b], strict=True))
    return out


def apply(proposal: dict, audit: dict) -> dict:
    """Labels from the proposal and the audit, with counts of what the audit changed."""
    n = proposal["frames"]
    tracks = {t["track"]: t for t in proposal["tracks"]}
    frames: list[list[dict]] = [[] for _ in range(n)]
    used, kept_proposed, added, by_hand, ignored = set(), 0, 0, 0, 0
    for obj in audit["objects"]:
        proposed: dict[int, Box] = {}
        for tid in obj.get("tracks", []):  # where two tracks overlap, a detected box wins
            used.add(tid)
            for f, b in tracks[tid]["boxes"].items():
                if f in tracks[tid]["scores"] or int(f) not in proposed:
                    proposed[int(f)] = tuple(b)
        hand = {int(f): tuple(b) for f, b in obj.get("boxes", {}).items()}
        visible = sorted(_spans(obj["frames"]))
        boxes = _fill({**proposed, **hand}, visible)
        skip = _spans(obj.get("ignore", []))
        for f in visible:
            item = {"id": obj["id"], "label": "face", "box": [round(v, 1) for v in boxes[f]]}
            if f in skip:
                item["ignore"] = True
                ignored += 1
            frames[f].append(item)
            by_hand += f in hand
            kept_proposed += f in proposed and f not in hand
            added += f not in proposed and f not in hand
    proposed_total = sum(len(t["boxes"]) for t in proposal["tracks"])
    made = {
        "objects": len(audit["objects"]),
        "boxes": sum(len(f) for f in frames),
        "ignored": ignored,
        "proposed": proposed_total,
        "proposed_kept": kept_proposed,
        "proposed_removed": proposed_total - kept_proposed - by_hand,
        "set_by_hand": by_hand,
        "added_by_interpolation": added,
        "tracks_dropped": sorted(set(tracks) - used),
    }
    return {"clip": proposal["clip"], "frames": frames, "made": made, "note": audit.get("note", "")}


def sheet(
    clip: Path,
    data: dict,
    out: Path,
    first: int,
    last: int | None,
    step: int,
    zoom: float,
    window: int = 128,
    at: tuple[float, float] | None = None,
) -> None:
    """Frames with boxes, frame numbers and ids: a proposal (tracks; red = detected at the
    frame, yellow = interpolated) or labels (green; grey = ignore). With ``zoom`` > 1 each tile
    is a ``window`` px square around that frame's boxes, enlarged: faces of 20 px are judged there."""
    from PIL import Image, ImageDraw

    from anonymizer.video import io

    if last is None:
        last = (data["frames"] if "tracks" in data else len(data["frames"])) - 1
    boxes: dict[int, list[tuple[str, Box, tuple]]] = {}
    if "tracks" in data:
        for t in data["tracks"]:
            for f, b in t["boxes"].items():
                color = (255, 0, 0) if f in t["scores"] else (255, 200, 0)
                score = t["scores"].get(f)
                boxes.setdefault(int(f), []).append((f"t{t['track']}" + (f" {score:.2f}" if score else ""), b, color))
    else:
        for f, items in enumerate(data["frames"]):
            for o in items:
                color = (150, 150, 150) if o.get("ignore") else (0, 220, 0)
                boxes.setdefault(f, []).append((f"#{o['id']}", o["box"], color))
    chosen = set(range(first, last + 1, step))
    tiles, centre = [], None
    for frame in io.read_frames(clip, start=first, stop=last + 1):
        if frame.index not in chosen:
            continue
        im = Image.fromarray(frame.pixels[:, :, ::-1])
        here = boxes.get(frame.index, [])
        ox = oy = 0
        s = 1.0
        if zoom > 1:  # a window of ``window`` px around ``at``, or this frame's boxes (or the last ones)
            if at:
                centre = at
            elif here:
                centre = (
                    sum(b[0] + b[2] for _, b, _ in here) / (2 * len(here)),
                    sum(b[1] + b[3] for _, b, _ in here) / (2 * len(here)),
                )
            cx, cy = centre or (im.width / 2, im.height / 2)
            ox, oy = int(cx - window / 2), int(cy - window / 2)
            im = im.crop((ox, oy, ox + window, oy + window)).resize((int(window * zoom),) * 2)
            s = zoom
        draw = ImageDraw.Draw(im)
        for text, (x1, y1, x2, y2), color in here:
            xy = [(x1 - ox) * s, (y1 - oy) * s, (x2 - ox) * s, (y2 - oy) * s]
            draw.rectangle(xy, outline=color, width=1)
            draw.text((xy[0], xy[3] + 1), text, fill=color)
        draw.text((3, 3), str(frame.index), fill=(255, 0, 255))
        tiles.append(im)
    w, h = tiles[0].size
    cols = max(1, min(10, 1800 // w))
    page = Image.new("RGB", (w * cols, h * ((len(tiles) + cols - 1) // cols)))
    for k, im in enumerate(tiles):
        page.paste(im, ((k % cols) * w, (k // cols) * h))
    page.save(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cut")
    c.add_argument("src", type=Path)
    c.add_argument("dst", type=Path)
    c.add_argument("--start", type=float, required=True)
    c.add_argument("--seconds", type=float, required=True)
    pr = sub.add_parser("propose")
    pr.add_argument("clip", type=Path)
    pr.add_argument("out", type=Path)
    pr.add_argument("--scale", type=float, default=2.0)
    pr.add_argument("--min-score", type=float, default=0.1)
    a = sub.add_parser("apply")
    a.add_argument("proposal", type=Path)
    a.add_argument("audit", type=Path)
    a.add_argument("out", type=Path)
    s = sub.add_parser("sheet")
    s.add_argument("clip", type=Path)
    s.add_argument("data", type=Path, help="a proposal or labels")
    s.add_argument("out", type=Path)
    s.add_argument("--first", type=int, default=0)
    s.add_argument("--last", type=int)
    s.add_argument("--step", type=int, default=1)
    s.add_argument("--zoom", type=float, default=1.0, help="> 1: a window around the boxes, enlarged")
    s.add_argument("--window", type=int, default=128, help="window side in frame pixels")
    s.add_argument("--at", type=float, nargs=2, metavar=("X", "Y"), help="a fixed window centre")
    args = p.parse_args(argv)
    if args.cmd == "cut":
        print(f"{cut(args.src, args.dst, args.start, args.seconds)} frames -> {args.dst}")
    elif args.cmd == "propose":
        args.out.write_text(json.dumps(propose(args.clip, args.scale, args.min_score)))
    elif args.cmd == "apply":
        labels = apply(json.loads(args.proposal.read_text()), json.loads(args.audit.read_text()))
        head = "".join(f" {json.dumps(k)}: {json.dumps(v)},\n" for k, v in labels.items() if k != "frames")
        rows = ",\n".join("  " + json.dumps(f) for f in labels["frames"])  # one frame per line
        args.out.write_text("{\n" + head + ' "frames": [\n' + rows + "\n ]\n}\n")
        print(json.dumps(labels["made"]))
    else:
        data = json.loads(args.data.read_text())
        sheet(args.clip, data, args.out, args.first, args.last, args.step, args.zoom, args.window, args.at)
    return 0


if __name__ == "__main__":
    sys.exit(main())
