"""``anonymize backfill s3://bucket/prefix``: one S3 Batch Operations job over what is already there.

    anonymize backfill s3://photos/2019/ --stack anonymizer            # asks, then runs and waits
    anonymize backfill s3://photos/ --inventory s3://inv/.../manifest.json --stack anonymizer
    anonymize backfill s3://photos/ --stack anonymizer --dry-run       # count, cost, first keys

Builds the manifest (listing, or an S3 Inventory report), shows the count and a cost estimate
(measured ms per image x the Lambda price), asks for confirmation, creates the job that
invokes the stack's backfill function, draws a progress bar while it runs and summarises the
completion report. The logic is in :mod:`anonymizer_local.backfill`; this module is only the command.
Exit codes as the CLI's: 0 all done, 3 some objects failed, 1 none done, 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from .backfill import (
    BackfillError,
    Estimate,
    JobSpec,
    ManifestEntry,
    S3ControlJobs,
    estimate_cost,
    format_summary,
    inventory_manifest,
    list_manifest,
    measured_ms_from_reports,
    measured_ms_here,
    parse_s3_url,
    run_job,
    summarize_report,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
DESCRIPTION = "Anonymize objects already in a bucket with one S3 Batch Operations job."
STACK_OUTPUTS = {
    "function_arn": "S3BackfillFunctionArn",
    "role_arn": "BatchOperationsRoleArn",
    "report_bucket": "BackfillBucketName",
    "output_bucket": "OutputBucketName",
}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``backfill`` on an argparse subparsers object (None: a standalone parser)."""
    if subparsers is None:
        parser = argparse.ArgumentParser(
            prog="anonymize backfill", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
    else:
        parser = subparsers.add_parser("backfill", help=DESCRIPTION, description=__doc__)
    arguments(parser)
    return parser


def arguments(parser: argparse.ArgumentParser) -> None:
    """The command's arguments (``anonymize backfill --help``)."""
    parser.add_argument("source", help="s3://bucket/prefix: the images to anonymize")
    parser.add_argument("--inventory", metavar="S3_URL", help="manifest.json of an S3 Inventory report (CSV) to use")
    parser.add_argument("--stack", help="CloudFormation stack whose outputs name the function, role and buckets")
    parser.add_argument("--function-arn", help="the backfill function (default: the stack's S3BackfillFunctionArn)")
    parser.add_argument("--role-arn", help="the Batch Operations role (default: the stack's BatchOperationsRoleArn)")
    parser.add_argument("--report-bucket", help="bucket for the manifest and the completion report")
    parser.add_argument("--output-bucket", help="the stack's output bucket (to measure ms per image from reports)")
    parser.add_argument("--ms-per-image", type=float, help="skip measuring: milliseconds per image on Lambda")
    parser.add_argument("--memory-mb", type=int, default=2048, help="the function's memory (default 2048)")
    parser.add_argument("--arch", choices=("arm64", "x86_64"), default="arm64", help="the function's architecture")
    parser.add_argument("--dry-run", action="store_true", help="show what would run; create nothing")
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--poll", type=float, default=5.0, help="seconds between progress updates")


def build_manifest(s3: Any, args: argparse.Namespace) -> list[ManifestEntry]:
    bucket, prefix = parse_s3_url(args.source)
    if args.inventory:
        return [e for e in inventory_manifest(s3, args.inventory, prefix) if e.bucket == bucket]
    return list_manifest(s3, bucket, prefix)


def resolve_stack(args: argparse.Namespace, cloudformation: Any = None) -> None:
    """Fill unset ARNs and bucket names from the stack's outputs."""
    if not args.stack:
        return
    if cloudformation is None:
        import boto3

        cloudformation = boto3.client("cloudformation")
    (stack,) = cloudformation.describe_stacks(StackName=args.stack)["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    for attr, name in STACK_OUTPUTS.items():
        if not getattr(args, attr) and name in outputs:
            setattr(args, attr, outputs[name])


def make_estimate(s3: Any, args: argparse.Namespace, entries: list[ManifestEntry]) -> Estimate:
    """Measured ms per image: given, else the median of the output bucket's recent reports
    (measured on Lambda), else a run of the anonymizer on a few manifest objects here."""
    ms, source = args.ms_per_image, "given"
    if ms is None and args.output_bucket:
        ms, source = measured_ms_from_reports(s3, args.output_bucket), f"median of reports in {args.output_bucket}"
    if ms is None:
        ms, source = measured_ms_here(s3, entries), "measured on this machine"
    if ms is None:
        raise BackfillError("cannot measure ms per image (no readable sample); pass --ms-per-image")
    return estimate_cost(len(entries), ms, memory_mb=args.memory_mb, arch=args.arch, ms_source=source)


def run(
    args: argparse.Namespace,
    *,
    s3: Any = None,
    jobs: Any = None,
    confirm: Callable[[str], bool] | None = None,
    out: Any = None,
    err: Any = None,
) -> int:
    """The command. ``s3``, ``jobs`` and ``confirm`` can be injected (tests, local runs)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        if s3 is None:
            import boto3

            s3 = boto3.client("s3")
        resolve_stack(args)
        entries = build_manifest(s3, args)
        if not entries:
            print(f"nothing to backfill under {args.source}", file=out)
            return EXIT_OK
        estimate = make_estimate(s3, args, entries)
        print(estimate.describe(), file=out)
        if args.dry_run:
            for e in entries[:10]:
                print(f"  would anonymize s3://{e.bucket}/{e.key}", file=out)
            if len(entries) > 10:
                print(f"  ... and {len(entries) - 10} more", file=out)
            print("dry run: no manifest uploaded, no job created", file=out)
            return EXIT_OK
        missing = [
            f"--{a.replace('_', '-')}" for a in ("function_arn", "role_arn", "report_bucket") if not getattr(args, a)
        ]
        if missing:
            print(f"anonymize backfill: {', '.join(missing)} needed (or --stack)", file=err)
            return EXIT_USAGE
        if not args.yes:
            ask = confirm or _ask
            if not ask(
                f"Start a Batch Operations job over {len(entries)} object(s), about ${estimate.usd:.2f}? [y/N] "
            ):
                print("not started", file=out)
                return EXIT_USAGE
        spec = JobSpec(
            account_id=args.function_arn.split(":")[4],
            function_arn=args.function_arn,
            role_arn=args.role_arn,
            report_bucket=args.report_bucket,
        )
        jobs = jobs or S3ControlJobs(s3=s3)

        def draw(line: str) -> None:
            print("\r" + line, end="", file=err, flush=True)

        job_id, _, rows = run_job(s3, jobs, spec, entries, poll_s=args.poll, draw=draw)
        print(file=err)
    except BackfillError as exc:
        print(f"anonymize backfill: {exc}", file=err)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - AWS errors (credentials, access, throttling): one line
        if not _is_aws_error(exc):
            raise
        print(f"anonymize backfill: {type(exc).__name__}: {exc}", file=err)
        return EXIT_FAILED
    summary = summarize_report(rows)
    print(f"job {job_id}: " + format_summary(summary), file=out)
    failed = summary["permanent_failures"] + summary["temporary_failures"]
    if not failed:
        return EXIT_OK
    return EXIT_PARTIAL if failed < summary["tasks"] else EXIT_FAILED


def _is_aws_error(exc: BaseException) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    return isinstance(exc, BotoCoreError | ClientError)


def _ask(question: str) -> bool:
    if not sys.stdin.isatty():
        print("anonymize backfill: not a terminal; pass --yes to start without asking", file=sys.stderr)
        return False
    return input(question).strip().lower() in ("y", "yes")


def main(argv: list[str] | None = None) -> int:
    """``python -m anonymizer_local.backfill_cli`` (the same as ``anonymize backfill``)."""
    return run(add_parser(None).parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
