"""The ``aatrox-relay`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx

from relay import __version__, logs
from relay.config import Config, config_path, load
from relay.errors import ConfigError, RelayError

log = logging.getLogger("relay")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="the TOML config (default: $AATROX_RELAY_CONFIG, else /etc/aatrox-relay/config.toml)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one sub-command per verb."""
    parser = argparse.ArgumentParser(
        prog="aatrox-relay",
        description="Relay inbound SMS from the Aatrox SMS API v2 to signed webhooks.",
    )
    parser.add_argument("--version", action="version", version=f"aatrox-relay {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run the relay in the foreground (the daemon)")
    _add_config(run)

    check = sub.add_parser("check", help="validate the config, the token and the webhooks")
    _add_config(check)
    check.add_argument(
        "--offline", action="store_true", help="only validate the config and the files it names"
    )

    once = sub.add_parser("poll-once", help="poll every number once, deliver what is due, exit")
    _add_config(once)

    sim = sub.add_parser("simulate", help="run a local Aatrox API v2 simulator on loopback")
    sim.add_argument("--port", type=int, default=8765, help="port to listen on (default 8765)")
    sim.add_argument("--token", default="sim-token", help="bearer token it accepts")

    demo = sub.add_parser("demo", help="simulator + webhook receiver + relay, end to end")
    demo.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="stop after N seconds; exit 0 if every message was delivered",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except RelayError as exc:
        _error(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK


def _error(message: str) -> None:
    print(f"aatrox-relay: error: {message}", file=sys.stderr)


def _load(args: argparse.Namespace) -> Config:
    path: Path = config_path(args.config)
    config = load(path)
    logs.setup(config.log.level, config.log.format, pii=config.log.pii)
    return config


def _dispatch(args: argparse.Namespace) -> int:
    command: str = args.command
    if command == "run":
        return asyncio.run(_run(_load(args)))
    if command == "check":
        return _check(_load(args), offline=args.offline)
    if command == "poll-once":
        return asyncio.run(_poll_once(_load(args)))
    if command == "simulate":
        from relay.simulator import serve

        logs.setup("info")
        asyncio.run(serve(args.port, args.token))
        return EXIT_OK
    if command == "demo":
        from relay.demo import demo

        return asyncio.run(demo(args.seconds))
    raise AssertionError(command)  # argparse only accepts the commands above


async def _run(config: Config) -> int:
    from relay.service import Service

    return await Service(config).run()


async def _poll_once(config: Config) -> int:
    from relay.daemon import Relay

    async with Relay(config) as relay:
        summary = await relay.poll_once()
    for poll in summary.polls:
        line = poll.error or f"{poll.listed} listed, {poll.new} new, {poll.queued} queued"
        print(f"{logs.number(poll.number)}: {line}")
    counts = summary.counts
    print(
        f"deliveries: {counts['pending']} pending, {counts['delivered']} delivered, "
        f"{counts['dead']} dead"
    )
    return EXIT_FAILED if summary.failed else EXIT_OK


def _check(config: Config, *, offline: bool) -> int:
    print(
        f"config {config.path}: ok ({len(config.numbers)} numbers, "
        f"{len(config.webhooks)} webhooks, token from {config.api.token_source.describe()})"
    )
    if offline:
        return EXIT_OK
    problems = asyncio.run(_check_online(config))
    for problem in problems:
        print(f"FAILED {problem}")
    return EXIT_USAGE if problems else EXIT_OK


async def _check_online(config: Config) -> list[str]:
    """Try the token against the API and reach every webhook; the problems found."""
    from relay.api import AatroxClient

    problems: list[str] = []
    if config.numbers:
        number = config.numbers[0]
        async with AatroxClient(config.api) as api:
            try:
                listing = await api.receive(number.number, number.sender)
            except RelayError as exc:
                problems.append(f"api: {exc}")
            else:
                print(
                    f"api {config.api.base_url}: ok (token accepted, "
                    f"{len(listing.messages)} messages listed on {logs.number(number.number)})"
                )
    async with httpx.AsyncClient(follow_redirects=False) as client:
        for hook in config.webhooks:
            try:
                # Any HTTP answer proves the endpoint is reachable; nothing is delivered.
                response = await client.head(hook.url, timeout=hook.timeout)
            except httpx.HTTPError as exc:
                problems.append(
                    f"webhook {hook.name}: cannot reach it: {type(exc).__name__}: {exc}"[:300]
                )
            else:
                print(f"webhook {hook.name}: reachable (HEAD answered {response.status_code})")
    return problems
