"""``python -m bench``: run the scenarios, print the table, optionally write the results."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.procs import BenchError, Env
from bench.report import revision, table, write_json, write_markdown
from bench.runs import Settings
from bench.scenarios import SCENARIOS, run_scenarios

DEFAULT_SECONDS = 30.0
DEFAULT_REPEAT = 2
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PROFILES = ("cprofile", "py-spy")


def build_parser() -> argparse.ArgumentParser:
    """The arguments of ``python -m bench``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the relay against a bare forwarder measured in the same run.",
        epilog="Profile the forwarders with BENCH_PROFILE=cprofile or BENCH_PROFILE=py-spy "
        "(written to $BENCH_PROFILE_DIR, else a temporary directory).",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIOS,
        metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="shrink the sizes (0.01 for a quick run)"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=DEFAULT_SECONDS,
        help=f"how long the idle and latency runs measure (default {DEFAULT_SECONDS:g})",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=DEFAULT_REPEAT,
        help="run burst, big store and scale-out this many times, interleaved; best kept "
        f"(default {DEFAULT_REPEAT})",
    )
    parser.add_argument("--out", type=Path, help="write the results into this Markdown file")
    parser.add_argument("--json", type=Path, help="write the rows and their numbers as JSON")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BENCH_POSTGRES", DEFAULT_POSTGRES),
        help="server for scale-out; a database is created and dropped per run "
        "(default $BENCH_POSTGRES, else %(default)s)",
    )
    parser.add_argument(
        "--relay-path",
        type=Path,
        help="run the relay from this checkout (put before the repository on PYTHONPATH)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when every row was produced (targets met or not), 1 otherwise."""
    args = build_parser().parse_args(argv)
    if args.scale <= 0 or args.seconds <= 0 or args.repeat < 1:
        print("bench: error: --scale, --seconds and --repeat must be positive", file=sys.stderr)
        return 2
    profile = os.environ.get("BENCH_PROFILE") or None
    if profile is not None and profile not in PROFILES:
        print(f"bench: error: BENCH_PROFILE must be one of {', '.join(PROFILES)}", file=sys.stderr)
        return 2
    chosen = [name for name in SCENARIOS if name in (args.scenario or SCENARIOS)]
    workdir = Path(tempfile.mkdtemp(prefix="aatrox-bench-"))
    profile_dir = None
    if profile is not None:
        profile_dir = Path(os.environ.get("BENCH_PROFILE_DIR") or workdir / "profiles")
        profile_dir.mkdir(parents=True, exist_ok=True)
    env = Env(workdir, args.relay_path.resolve() if args.relay_path else None, profile, profile_dir)
    settings = Settings(args.scale, args.seconds, env, args.postgres, args.repeat)
    command = _command(args)
    relay = revision(env.relay_path)
    print(f"bench: {relay}; work directory {workdir}", flush=True)
    try:
        report = run_scenarios(settings, chosen)
    except BenchError as exc:
        print(f"bench: error: {exc} (logs in {workdir})", file=sys.stderr)
        return 1
    if not args.keep and profile is None:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{relay}\n{table(report.rows)}")
    for note in report.notes:
        print(f"- {note}")
    if args.out:
        write_markdown(args.out, report, command, relay)
    if args.json:
        write_json(args.json, report, command, relay)
    return 0


def _command(args: argparse.Namespace) -> str:
    words = ["python", "-m", "bench"]
    for name in args.scenario or ():
        words += ["--scenario", name]
    if args.scale != 1.0:
        words += ["--scale", f"{args.scale:g}"]
    if args.seconds != DEFAULT_SECONDS:
        words += ["--seconds", f"{args.seconds:g}"]
    if args.repeat != DEFAULT_REPEAT:
        words += ["--repeat", str(args.repeat)]
    if args.out:
        words += ["--out", str(args.out)]
    return shlex.join(words)
