"""Backfill: anonymize what is already in a bucket with one S3 Batch Operations job.

The laptop side of ``anonymize backfill`` (the Lambda side is :mod:`anonymizer.aws.batch`):

* a manifest — from a listing of ``s3://bucket/prefix`` or from an S3 Inventory report the user
  names (its ``manifest.json``): image keys only, current versions only, as the CSV manifest
  Batch Operations reads (``Bucket,Key[,VersionId]``, keys URL-encoded);
* a cost estimate — measured milliseconds per image (the ``latency_ms`` of recent reports in the
  output bucket, i.e. measured on Lambda itself; else a run on this machine) x the Lambda price,
  plus the per-object S3, EventBridge and Batch Operations charges;
* a job — :class:`S3ControlJobs` creates a ``LambdaInvoke`` job (invocation schema 2.0) with the
  stack's Batch Operations role; :class:`LocalJobs` runs the same manifest locally, invoking the
  real ``functions/s3_backfill`` handler once per row with schema 2.0 events and retrying
  ``TemporaryFailure`` as Batch Operations does (moto has no ``s3control:CreateJob``);
* the completion report — both write/read the same CSV report (``Report_CSV_20180820``) and
  :func:`summarize_report` turns it into counts per outcome.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote_plus, unquote_plus, urlsplit

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif", ".avif"}
)
REPORT_SCHEMA = "Bucket, Key, VersionId, TaskStatus, ErrorCode, HTTPStatusCode, Result"
MANIFEST_FORMAT = "S3BatchOperations_CSV_20180820"
REPORT_FORMAT = "Report_CSV_20180820"

# Prices (USD, us-east-1, on-demand; check https://aws.amazon.com/lambda/pricing/ for your region).
LAMBDA_GB_SECOND = {"arm64": 0.0000133334, "x86_64": 0.0000166667}
LAMBDA_REQUEST = 0.20 / 1_000_000
S3_GET = 0.0004 / 1000  # GET/HEAD
S3_PUT = 0.005 / 1000  # PUT (report + image)
EVENTBRIDGE_EVENT = 1.00 / 1_000_000
BATCH_JOB = 0.25
BATCH_OBJECT = 1.00 / 1_000_000


class BackfillError(RuntimeError):
    """The backfill cannot start or its job cannot be read (a message for the user)."""


@dataclass(frozen=True)
class ManifestEntry:
    bucket: str
    key: str
    version_id: str | None = None
    size: int | None = None


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise BackfillError(f"expected s3://bucket[/prefix], got {url!r}")
    return parts.netloc, parts.path.lstrip("/")


def is_image_key(key: str) -> bool:
    return PurePosixPath(key).suffix.lower() in IMAGE_SUFFIXES and not key.endswith(".report.json")


# -- manifests ------------------------------------------------------------------------------------


def list_manifest(s3: Any, bucket: str, prefix: str = "") -> list[ManifestEntry]:
    """Every image under ``prefix`` (current versions; folder markers and reports left out)."""
    entries = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if is_image_key(obj["Key"]) and obj.get("Size", 1) > 0:
                entries.append(ManifestEntry(bucket, obj["Key"], None, int(obj.get("Size", 0))))
    return entries


def inventory_manifest(s3: Any, manifest_url: str, prefix: str = "") -> list[ManifestEntry]:
    """Images listed by an S3 Inventory report (CSV), given the URL of its ``manifest.json``.

    Only the latest, non-deleted versions; keys in inventory CSVs are URL-encoded.
    """
    bucket, key = parse_s3_url(manifest_url)
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    if manifest.get("fileFormat", "CSV").upper() != "CSV":
        raise BackfillError(f"inventory format {manifest.get('fileFormat')} is not supported; use CSV")
    columns = [c.strip() for c in str(manifest.get("fileSchema", "Bucket, Key")).split(",")]
    entries = []
    for item in manifest.get("files", []):
        body = s3.get_object(Bucket=bucket, Key=item["key"])["Body"].read()
        if item["key"].endswith(".gz"):
            body = gzip.decompress(body)
        for row in csv.reader(io.StringIO(body.decode("utf-8"))):
            rec = dict(zip(columns, row, strict=False))
            obj_key = unquote_plus(rec.get("Key", ""))
            if rec.get("IsLatest", "true").lower() != "true" or rec.get("IsDeleteMarker", "false").lower() == "true":
                continue
            if not obj_key.startswith(prefix) or not is_image_key(obj_key):
                continue
            size = rec.get("Size")
            entries.append(ManifestEntry(rec["Bucket"], obj_key, rec.get("VersionId") or None, int(size or 0) or None))
    return entries


def manifest_csv(entries: Iterable[ManifestEntry]) -> bytes:
    """The Batch Operations CSV manifest: ``bucket,key[,version]``, keys URL-encoded."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for e in entries:
        row = [e.bucket, quote_plus(e.key, safe="/")]
        if e.version_id:
            row.append(e.version_id)
        writer.writerow(row)
    return out.getvalue().encode()


def parse_manifest_csv(data: bytes) -> list[ManifestEntry]:
    return [
        ManifestEntry(row[0], unquote_plus(row[1]), (row[2] if len(row) > 2 and row[2] else None))
        for row in csv.reader(io.StringIO(data.decode("utf-8")))
        if row
    ]


# -- cost -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    objects: int
    ms_per_image: float
    ms_source: str
    lambda_seconds: float
    usd: float
    usd_lambda: float
    usd_other: float

    def describe(self) -> str:
        hours = self.lambda_seconds / 3600
        return (
            f"{self.objects} object(s); {self.ms_per_image:.0f} ms per image ({self.ms_source}) -> "
            f"{hours:.2f} Lambda-hours; estimated cost ${self.usd:.2f} "
            f"(Lambda ${self.usd_lambda:.2f}, S3 requests + events + Batch Operations ${self.usd_other:.2f})"
        )


def estimate_cost(
    objects: int, ms_per_image: float, *, memory_mb: int = 2048, arch: str = "arm64", ms_source: str = "given"
) -> Estimate:
    """Lambda compute (ms x GB x price per GB-second) + requests, S3 requests (HEAD, report check,
    GET, tags, two PUTs), one event per object and the Batch Operations charges."""
    seconds = objects * ms_per_image / 1000.0
    usd_lambda = seconds * memory_mb / 1024 * LAMBDA_GB_SECOND[arch] + objects * LAMBDA_REQUEST
    usd_other = objects * (4 * S3_GET + 2 * S3_PUT + EVENTBRIDGE_EVENT + BATCH_OBJECT) + BATCH_JOB
    return Estimate(objects, ms_per_image, ms_source, seconds, usd_lambda + usd_other, usd_lambda, usd_other)


def measured_ms_from_reports(s3: Any, output_bucket: str, *, sample: int = 25) -> float | None:
    """Median ``latency_ms`` of the newest reports in the output bucket (measured on Lambda)."""
    reports = []
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=output_bucket):
            reports += [o for o in page.get("Contents", []) if o["Key"].endswith(".report.json")]
    except Exception:  # noqa: BLE001 - no access to the output bucket: measure elsewhere
        return None
    reports.sort(key=lambda o: o["LastModified"], reverse=True)
    values = []
    for obj in reports[:sample]:
        try:
            values.append(
                float(json.loads(s3.get_object(Bucket=output_bucket, Key=obj["Key"])["Body"].read())["latency_ms"])
            )
        except Exception:  # noqa: BLE001, S112 - a report without a latency does not count
            continue
    return statistics.median(values) if values else None


def measured_ms_here(s3: Any, entries: list[ManifestEntry], *, sample: int = 3) -> float | None:
    """Median milliseconds of the anonymizer on a few manifest objects, on this machine."""
    from anonymizer.options import Options
    from anonymizer.pipeline import Anonymizer

    if not entries:
        return None
    engine = Anonymizer()
    step = max(1, len(entries) // sample)
    values = []
    for e in entries[::step][:sample]:
        data = s3.get_object(Bucket=e.bucket, Key=e.key)["Body"].read()
        started = time.perf_counter()
        try:
            engine.anonymize(data, Options())
        except Exception:  # noqa: BLE001, S112 - a corrupt sample says nothing about speed
            continue
        values.append((time.perf_counter() - started) * 1000)
    return statistics.median(values) if values else None


# -- completion reports ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportRow:
    bucket: str
    key: str
    version_id: str | None
    task_status: str  # succeeded | failed
    error_code: str  # PermanentFailure | TemporaryFailure | "" ...
    http_status: str
    result: str


def report_csv(rows: Iterable[ReportRow]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for r in rows:
        writer.writerow(
            [
                r.bucket,
                quote_plus(r.key, safe="/"),
                r.version_id or "",
                r.task_status,
                r.error_code,
                r.http_status,
                r.result,
            ]
        )
    return out.getvalue().encode()


def parse_report_csv(data: bytes, schema: str = REPORT_SCHEMA) -> list[ReportRow]:
    columns = [c.strip() for c in schema.split(",")]
    rows = []
    for raw in csv.reader(io.StringIO(data.decode("utf-8"))):
        if not raw:
            continue
        rec = dict(zip(columns, raw, strict=False))
        code, status = rec.get("ErrorCode", ""), rec.get("HTTPStatusCode", "")
        if code.isdigit() and not status.isdigit():  # tolerate either column order
            code, status = status, code
        rows.append(
            ReportRow(
                bucket=rec.get("Bucket", ""),
                key=unquote_plus(rec.get("Key", "")),
                version_id=rec.get("VersionId") or None,
                task_status=rec.get("TaskStatus", "").lower(),
                error_code=code,
                http_status=status,
                result=rec.get("Result", rec.get("ResultMessage", "")),
            )
        )
    return rows


def read_completion_report(s3: Any, bucket: str, manifest_key: str) -> list[ReportRow]:
    """Every row of a job's completion report, from its ``manifest.json``."""
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    schema = manifest.get("ReportSchema", REPORT_SCHEMA)
    rows = []
    for item in manifest.get("Results", []):
        body = s3.get_object(Bucket=item.get("Bucket", bucket).split(":::")[-1], Key=item["Key"])["Body"].read()
        rows += parse_report_csv(body, schema)
    return rows


def summarize_report(rows: list[ReportRow], *, show: int = 10) -> dict[str, Any]:
    """Counts per outcome: anonymized, skipped (already done), permanent and temporary failures."""
    outcome: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    failures = []
    for r in rows:
        if r.task_status == "succeeded":
            outcome["skipped" if r.result.startswith("skipped") else "anonymized"] += 1
            continue
        kind = "temporary_failures" if r.error_code == "TemporaryFailure" else "permanent_failures"
        outcome[kind] += 1
        reasons[r.result.split(":", 1)[0] or r.error_code or "failed"] += 1
        if len(failures) < show:
            failures.append({"key": r.key, "code": r.error_code, "message": r.result})
    return {
        "tasks": len(rows),
        "anonymized": outcome["anonymized"],
        "skipped": outcome["skipped"],
        "permanent_failures": outcome["permanent_failures"],
        "temporary_failures": outcome["temporary_failures"],
        "failure_reasons": dict(reasons),
        "first_failures": failures,
    }


def format_summary(summary: Mapping[str, Any]) -> str:
    lines = [
        f"{summary['tasks']} task(s): {summary['anonymized']} anonymized, {summary['skipped']} skipped "
        f"(already anonymized), {summary['permanent_failures']} permanent failure(s), "
        f"{summary['temporary_failures']} failed after retries"
    ]
    if summary["failure_reasons"]:
        lines.append("failures by reason: " + ", ".join(f"{k} {v}" for k, v in summary["failure_reasons"].items()))
    lines += [f"  FAILED {f['key']}: {f['message']}" for f in summary["first_failures"]]
    return "\n".join(lines)


# -- jobs -----------------------------------------------------------------------------------------


@dataclass
class JobProgress:
    status: str  # Active, Complete, Failed, Cancelled, ... (Batch Operations' words)
    total: int
    succeeded: int
    failed: int
    report_bucket: str | None = None
    report_manifest_key: str | None = None

    @property
    def done(self) -> bool:
        return self.status in ("Complete", "Failed", "Cancelled")


@dataclass(frozen=True)
class JobSpec:
    """What a backfill job needs besides the manifest."""

    account_id: str
    function_arn: str
    role_arn: str
    report_bucket: str
    report_prefix: str = "reports"  # the stack's BatchOperationsRole may write reports/* only
    manifest_prefix: str = "manifests"  # ... and read manifests/* only
    priority: int = 10
    description: str = "anonymize backfill"


def upload_manifest(s3: Any, spec: JobSpec, entries: list[ManifestEntry]) -> tuple[str, str]:
    """Write the CSV manifest to the report bucket; returns (key, ETag)."""
    body = manifest_csv(entries)
    key = f"{spec.manifest_prefix}/{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{hashlib.sha256(body).hexdigest()[:12]}.csv"
    etag = s3.put_object(Bucket=spec.report_bucket, Key=key, Body=body, ContentType="text/csv")["ETag"]
    return key, etag.strip('"')


class S3ControlJobs:
    """Batch Operations through ``s3control`` (real AWS)."""

    def __init__(self, s3control: Any = None, s3: Any = None):
        import boto3

        self.s3control = s3control or boto3.client("s3control")
        self.s3 = s3 or boto3.client("s3")
        self.account_id = ""

    def create_job(self, spec: JobSpec, manifest_key: str, manifest_etag: str, *, versioned: bool) -> str:
        self.account_id = spec.account_id
        fields = ["Bucket", "Key", "VersionId"] if versioned else ["Bucket", "Key"]
        response = self.s3control.create_job(
            AccountId=spec.account_id,
            ConfirmationRequired=False,  # the CLI asked already
            Operation={
                "LambdaInvoke": {
                    "FunctionArn": spec.function_arn,
                    "InvocationSchemaVersion": "2.0",
                    "UserArguments": {"requested-by": "anonymize backfill"},
                }
            },
            Manifest={
                "Spec": {"Format": MANIFEST_FORMAT, "Fields": fields},
                "Location": {"ObjectArn": f"arn:aws:s3:::{spec.report_bucket}/{manifest_key}", "ETag": manifest_etag},
            },
            Report={
                "Bucket": f"arn:aws:s3:::{spec.report_bucket}",
                "Format": REPORT_FORMAT,
                "Enabled": True,
                "Prefix": spec.report_prefix,
                "ReportScope": "AllTasks",
            },
            Priority=spec.priority,
            RoleArn=spec.role_arn,
            ClientRequestToken=str(uuid.uuid4()),
            Description=spec.description,
        )
        return response["JobId"]

    def describe(self, job_id: str) -> JobProgress:
        job = self.s3control.describe_job(AccountId=self.account_id, JobId=job_id)["Job"]
        progress = job.get("ProgressSummary", {})
        report = job.get("Report", {})
        bucket = str(report.get("Bucket", "")).split(":::")[-1] or None
        prefix = report.get("Prefix", "")
        return JobProgress(
            status=job.get("Status", "New"),
            total=int(progress.get("TotalNumberOfTasks", 0)),
            succeeded=int(progress.get("NumberOfTasksSucceeded", 0)),
            failed=int(progress.get("NumberOfTasksFailed", 0)),
            report_bucket=bucket,
            report_manifest_key=f"{prefix}/job-{job_id}/manifest.json".lstrip("/"),
        )

    def completion_report(self, progress: JobProgress) -> list[ReportRow]:
        return read_completion_report(self.s3, progress.report_bucket, progress.report_manifest_key)


@dataclass
class _LocalJob:
    progress: JobProgress
    thread: threading.Thread | None = None
    rows: list[ReportRow] = field(default_factory=list)


class LocalJobs:
    """Batch Operations emulated on this machine, for moto: reads the uploaded manifest, invokes
    ``handler`` (the real ``functions/s3_backfill`` handler) once per row with an invocation
    schema 2.0 event, retries ``TemporaryFailure`` up to ``attempts`` times, and writes the
    completion report (CSV + ``manifest.json``) where Batch Operations would."""

    def __init__(
        self, handler: Callable[[dict, Any], dict], s3: Any, *, attempts: int = 3, retry_delay_s: float = 0.05
    ):
        self.handler = handler
        self.s3 = s3
        self.attempts = attempts
        self.retry_delay_s = retry_delay_s
        self.jobs: dict[str, _LocalJob] = {}

    def create_job(self, spec: JobSpec, manifest_key: str, manifest_etag: str, *, versioned: bool) -> str:
        entries = parse_manifest_csv(self.s3.get_object(Bucket=spec.report_bucket, Key=manifest_key)["Body"].read())
        job_id = str(uuid.uuid4())
        job = _LocalJob(JobProgress("Active", len(entries), 0, 0, spec.report_bucket))
        job.progress.report_manifest_key = f"{spec.report_prefix}/job-{job_id}/manifest.json"
        job.thread = threading.Thread(target=self._run, args=(job_id, job, spec, entries), daemon=True)
        self.jobs[job_id] = job
        job.thread.start()
        return job_id

    def invocation_event(self, job_id: str, entry: ManifestEntry) -> dict:
        """A schema 2.0 ``LambdaInvoke`` event for one manifest row (one task per invocation)."""
        return {
            "invocationSchemaVersion": "2.0",
            "invocationId": uuid.uuid4().hex,
            "job": {"id": job_id, "userArguments": {"requested-by": "anonymize backfill"}},
            "tasks": [
                {
                    "taskId": uuid.uuid4().hex,
                    "s3Bucket": entry.bucket,
                    "s3Key": quote_plus(entry.key, safe="/"),
                    "s3VersionId": entry.version_id,
                }
            ],
        }

    def _run(self, job_id: str, job: _LocalJob, spec: JobSpec, entries: list[ManifestEntry]) -> None:
        from .emulator import FakeLambdaContext

        for entry in entries:  # one invocation at a time: the emulated function is one container
            for attempt in range(1, self.attempts + 1):
                answer = self.handler(
                    self.invocation_event(job_id, entry), FakeLambdaContext(function_name="anonymizer-backfill")
                )
                (result,) = answer["results"]
                if result["resultCode"] != "TemporaryFailure" or attempt == self.attempts:
                    break
                time.sleep(self.retry_delay_s * attempt)
            ok = result["resultCode"] == "Succeeded"
            job.rows.append(
                ReportRow(
                    entry.bucket,
                    entry.key,
                    entry.version_id,
                    "succeeded" if ok else "failed",
                    "" if ok else result["resultCode"],
                    "200",
                    result.get("resultString") or "",
                )
            )
            if ok:
                job.progress.succeeded += 1
            else:
                job.progress.failed += 1
        self._write_report(job_id, job, spec)
        job.progress.status = "Complete"

    def _write_report(self, job_id: str, job: _LocalJob, spec: JobSpec) -> None:
        base = f"{spec.report_prefix}/job-{job_id}"
        results = []
        for status in ("succeeded", "failed"):
            rows = [r for r in job.rows if r.task_status == status]
            if not rows:
                continue
            body = report_csv(rows)
            key = f"{base}/results/{hashlib.sha1(body).hexdigest()}.csv"  # noqa: S324 - a name, not security
            self.s3.put_object(Bucket=spec.report_bucket, Key=key, Body=body)
            results.append({"TaskExecutionStatus": status, "Bucket": f"arn:aws:s3:::{spec.report_bucket}", "Key": key})
        manifest = {
            "Format": REPORT_FORMAT,
            "ReportCreationDate": datetime.now(UTC).isoformat(timespec="seconds"),
            "Results": results,
            "ReportSchema": REPORT_SCHEMA,
        }
        self.s3.put_object(Bucket=spec.report_bucket, Key=f"{base}/manifest.json", Body=json.dumps(manifest).encode())

    def describe(self, job_id: str) -> JobProgress:
        return self.jobs[job_id].progress

    def completion_report(self, progress: JobProgress) -> list[ReportRow]:
        return read_completion_report(self.s3, progress.report_bucket, progress.report_manifest_key)


# -- running a job --------------------------------------------------------------------------------


def progress_bar(progress: JobProgress, width: int = 30) -> str:
    done = progress.succeeded + progress.failed
    total = max(progress.total, 1)
    filled = int(width * done / total)
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {done}/{progress.total} "
        f"({progress.succeeded} ok, {progress.failed} failed) {progress.status}"
    )


def wait_for(
    jobs: Any, job_id: str, *, poll_s: float = 5.0, draw: Callable[[str], None] | None = None, timeout_s: float = 0
) -> JobProgress:
    """Poll the job until it is complete, drawing a progress bar with ``draw``."""
    started = time.monotonic()
    while True:
        progress = jobs.describe(job_id)
        if draw:
            draw(progress_bar(progress))
        if progress.done:
            return progress
        if timeout_s and time.monotonic() - started > timeout_s:
            raise BackfillError(f"job {job_id} is still {progress.status} after {timeout_s:.0f} s")
        time.sleep(poll_s)


def run_job(
    s3: Any, jobs: Any, spec: JobSpec, entries: list[ManifestEntry], *, poll_s: float = 5.0, draw: Any = None
) -> tuple[str, JobProgress, list[ReportRow]]:
    """Upload the manifest, create the job, wait for it, read its completion report."""
    if not entries:
        raise BackfillError("nothing to backfill: the manifest is empty")
    manifest_key, etag = upload_manifest(s3, spec, entries)
    job_id = jobs.create_job(spec, manifest_key, etag, versioned=any(e.version_id for e in entries))
    progress = wait_for(jobs, job_id, poll_s=poll_s, draw=draw)
    if progress.status != "Complete":
        raise BackfillError(f"job {job_id} ended {progress.status}")
    return job_id, progress, jobs.completion_report(progress)
