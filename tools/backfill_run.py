"""Local backfill of N objects (default 1,000) through the real backfill function on moto's server.

    nice -n 10 .venv/bin/python tools/backfill_run.py              # 1,000 objects, 5 % corrupt in run 3
    .venv/bin/python tools/backfill_run.py --count 100 --json out.json

Small real pictures are made from the labelled photos under ../shared/data (random crops,
resized to 96-192 px, JPEG), written to a temporary folder, uploaded to moto's S3, and three
S3 Batch Operations jobs are run with :class:`anonymizer_local.backfill.LocalJobs` (the real
``functions/s3_backfill`` handler invoked once per manifest row with schema 2.0 events,
``TemporaryFailure`` retried), exactly as ``anonymize backfill`` drives a job:

1. all N objects: every one must be anonymized, one ``Object Anonymized`` event each;
2. the same job again: every one must be skipped (no model run, no event);
3. N new objects of which 5 % are corrupt: exactly those must be permanent failures (one
   ``Object Failed`` event each), every other one anonymized; nothing lost, nothing duplicated.

Completion events are captured by a rule on the default bus into a queue. Prints time and
objects/s per run; exits 1 when a check fails. A benchmark, not a test (tests/integration/
test_backfill.py runs a small job).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
REPORT_BUCKET = "anonymizer-backfill"


def make_images(folder: Path, count: int, seed: int) -> list[Path]:
    """``count`` small JPEGs: random crops of the labelled photos, resized (real content, faces
    and plates in many of them)."""
    sources = sorted(DATA.glob("faces/*/images/*")) + sorted(DATA.glob("plates/*/images/*"))
    sources = [p for p in sources if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    if not sources:
        raise SystemExit(f"no photos under {DATA}")
    rng = random.Random(seed)
    decoded: dict[Path, np.ndarray] = {}
    paths = []
    for i in range(count):
        src = sources[i % len(sources)] if i < len(sources) else rng.choice(sources)
        image = decoded.get(src)
        if image is None:
            image = cv2.imread(str(src), cv2.IMREAD_COLOR)
            if len(decoded) < 64:
                decoded[src] = image
        h, w = image.shape[:2]
        side = rng.randint(min(h, w) // 3, min(h, w))
        y, x = rng.randint(0, h - side), rng.randint(0, w - side)
        size = rng.randint(96, 192)
        small = cv2.resize(image[y : y + side, x : x + side], (size, size), interpolation=cv2.INTER_AREA)
        path = folder / f"img-{i:05d}.jpg"
        cv2.imwrite(str(path), small, [cv2.IMWRITE_JPEG_QUALITY, 85])
        paths.append(path)
    return paths


def corrupt(data: bytes, rng: random.Random) -> bytes:
    """A broken file: truncated, or garbage with a JPEG header."""
    if rng.random() < 0.5:
        return data[: max(20, len(data) // 5)]
    return b"\xff\xd8\xff\xe0" + bytes(rng.randrange(256) for _ in range(200))


def output_images(s3, bucket: str, prefix: str) -> list[str]:
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith(".report.json")]
    return keys


class Engine:
    """The real Anonymizer, counting pipeline runs."""

    def __init__(self):
        from anonymizer.pipeline import Anonymizer

        self.inner = Anonymizer()
        self.runs = 0

    def anonymize(self, data, options):
        self.runs += 1
        return self.inner.anonymize(data, options)

    def detect(self, data, options):
        return self.inner.detect(data, options)


def run_job(aws, jobs, spec, prefix: str) -> tuple[dict, float]:
    from anonymizer_local import backfill

    s3 = aws.client("s3")
    entries = backfill.list_manifest(s3, aws.names.input_bucket, prefix)
    started = time.perf_counter()
    _, _, rows = backfill.run_job(s3, jobs, spec, entries, poll_s=0.5)
    elapsed = time.perf_counter() - started
    summary = backfill.summarize_report(rows, show=0)
    summary["failed_keys"] = sorted(r.key for r in rows if r.task_status != "succeeded")
    return summary, elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--corrupt", type=float, default=0.05, help="share of corrupt objects in run 3")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)

    import anonymizer.aws as aws_pkg
    from anonymizer_local import backfill
    from anonymizer_local.emulator import LocalAws, load_function
    from anonymizer_local.event_capture import capture_events, drain

    rng = random.Random(args.seed)
    checks: list[tuple[str, bool]] = []
    figures: dict = {"count": args.count}
    quiet = {"POWERTOOLS_LOG_LEVEL": "ERROR", "POWERTOOLS_METRICS_DISABLED": "true", "EVENT_BUS_NAME": "default"}
    with tempfile.TemporaryDirectory() as tmp, LocalAws(env_defaults=quiet) as aws:
        t0 = time.perf_counter()
        paths = make_images(Path(tmp), args.count, args.seed)
        figures["make_images_s"] = round(time.perf_counter() - t0, 1)
        s3 = aws.client("s3")
        bucket = aws.names.input_bucket
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={})  # backfill only
        s3.create_bucket(Bucket=REPORT_BUCKET)
        events_url = capture_events(aws)
        engine = Engine()
        previous = aws_pkg.set_anonymizer(engine)
        try:
            fn = load_function("s3_backfill")
            jobs = backfill.LocalJobs(fn.lambda_handler, s3)
            spec = backfill.JobSpec(
                account_id="123456789012",
                function_arn="arn:aws:lambda:us-east-1:123456789012:function:anonymizer-backfill",
                role_arn="arn:aws:iam::123456789012:role/anonymizer-batch-operations",
                report_bucket=REPORT_BUCKET,
            )
            keys = [f"library/{p.name}" for p in paths]
            for key, path in zip(keys, paths, strict=True):
                s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())

            # 1. everything
            summary, elapsed = run_job(aws, jobs, spec, "library/")
            events = drain(aws, events_url)
            done = Counter(e["detail"]["input"]["key"] for e in events if e["detail-type"] == "Object Anonymized")
            outputs = output_images(s3, aws.names.output_bucket, "library/")
            figures["run1"] = {**_figures(summary, elapsed, args.count), "pipeline_runs": engine.runs}
            checks += [
                ("run 1: all anonymized", summary["anonymized"] == args.count and summary["tasks"] == args.count),
                ("run 1: no failure", summary["permanent_failures"] + summary["temporary_failures"] == 0),
                ("run 1: every output there, once", sorted(outputs) == sorted(keys)),
                ("run 1: one event per object", sorted(done) == sorted(keys) and set(done.values()) == {1}),
            ]

            # 2. the same job again
            runs_before = engine.runs
            summary, elapsed = run_job(aws, jobs, spec, "library/")
            figures["run2"] = {**_figures(summary, elapsed, args.count), "pipeline_runs": engine.runs - runs_before}
            checks += [
                ("run 2: all skipped", summary["skipped"] == args.count and summary["anonymized"] == 0),
                ("run 2: no model run", engine.runs == runs_before),
                ("run 2: no event", drain(aws, events_url) == []),
            ]

            # 3. new objects, 5 % corrupt
            bad = set(rng.sample(range(args.count), round(args.count * args.corrupt)))
            keys3 = [f"incoming/{p.name}" for p in paths]
            for i, (key, path) in enumerate(zip(keys3, paths, strict=True)):
                data = path.read_bytes()
                s3.put_object(Bucket=bucket, Key=key, Body=corrupt(data, rng) if i in bad else data)
            bad_keys = sorted(keys3[i] for i in bad)
            good_keys = sorted(set(keys3) - set(bad_keys))
            summary, elapsed = run_job(aws, jobs, spec, "incoming/")
            events = drain(aws, events_url)
            kinds = Counter((e["detail-type"], e["detail"]["input"]["key"]) for e in events)
            outputs = output_images(s3, aws.names.output_bucket, "incoming/")
            figures["run3"] = {**_figures(summary, elapsed, args.count), "corrupt": len(bad_keys)}
            checks += [
                ("run 3: exactly the corrupt ones failed", summary["failed_keys"] == bad_keys),
                ("run 3: as permanent failures", summary["permanent_failures"] == len(bad_keys)),
                ("run 3: all others anonymized", summary["anonymized"] == len(good_keys)),
                ("run 3: nothing lost, nothing duplicated", sorted(outputs) == good_keys),
                (
                    "run 3: one event per object",
                    sorted(k for (t, k) in kinds if t == "Object Anonymized") == good_keys
                    and sorted(k for (t, k) in kinds if t == "Object Failed") == bad_keys
                    and set(kinds.values()) == {1},
                ),
            ]
        finally:
            aws_pkg.set_anonymizer(previous)

    for name, ok in checks:
        print(f"{'ok  ' if ok else 'FAIL'}  {name}")
    for run in ("run1", "run2", "run3"):
        f = figures[run]
        print(
            f"{run}: {f['tasks']} objects in {f['seconds']:.1f} s = {f['objects_per_s']:.1f} objects/s "
            f"({f['anonymized']} anonymized, {f['skipped']} skipped, {f['permanent_failures']} permanent failures)"
        )
    figures["checks"] = {name: ok for name, ok in checks}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if all(ok for _, ok in checks) else 1


def _figures(summary: dict, elapsed: float, count: int) -> dict:
    keep = ("tasks", "anonymized", "skipped", "permanent_failures", "temporary_failures")
    return {
        **{k: summary[k] for k in keep},
        "seconds": round(elapsed, 2),
        "objects_per_s": round(count / elapsed, 1),
    }


if __name__ == "__main__":
    sys.exit(main())
