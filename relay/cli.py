"""The ``aatrox-relay`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from importlib import resources
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
    for command, (_file, summary, description) in SHIPPED_FILES.items():
        sub.add_parser(command, help=summary, description=description)
    _add_admin_commands(sub)
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
        from relay.testing.simulator import serve

        logs.setup("info")
        asyncio.run(serve(args.port, args.token))
        return EXIT_OK
    if command in SHIPPED_FILES:
        return _print_shipped(SHIPPED_FILES[command][0])
    if command == "demo":
        from relay.testing.demo import demo

        return asyncio.run(demo(args.seconds))
    if command in ADMIN_COMMANDS:
        return _admin(_load(args), args)
    raise AssertionError(command)  # argparse only accepts the commands above


#: Files the package ships (``relay/data/``, copies of the repository's
#: ``config.example.toml`` and ``systemd/aatrox-relay.service``), by the command that
#: prints them, so an install from a wheel can set up a service.
SHIPPED_FILES = {
    "print-config": (
        "config.example.toml",
        "print the example config",
        "Print config.example.toml: every key with its default and a comment. "
        "Redirect it to a file, e.g. /etc/aatrox-relay/config.toml, and edit that.",
    ),
    "print-unit": (
        "aatrox-relay.service",
        "print the systemd unit",
        "Print the systemd unit aatrox-relay.service; its ExecStart expects the relay "
        "in /opt/aatrox-relay (edit it if yours is elsewhere). Its comments say how to "
        "install it.",
    ),
}


def _print_shipped(name: str) -> int:
    """Write the shipped file ``name`` to standard output, byte for byte."""
    data = resources.files("relay").joinpath("data", name).read_bytes()
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return EXIT_OK


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
    """Try the token against the API, open the store and reach every webhook (a 401, 403
    or 404 to the HEAD is a problem); the problems found."""
    from relay import admin
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
    ok, line = await asyncio.to_thread(admin.check_store, config)
    store_line = f"store {admin.shown_store_url(config)}: {line}"
    if ok:
        print(store_line)
    else:
        problems.append(store_line)
    async with httpx.AsyncClient(follow_redirects=False) as client:
        for hook in config.webhooks:
            ok, line = await admin.probe_webhook(client, hook)
            if ok:
                print(f"webhook {hook.name}: {line}")
            else:
                problems.append(f"webhook {hook.name}: {line}")
    return problems


# --- the operator's commands (relay.admin) -----------------------------------------

ADMIN_COMMANDS = ("status", "deliveries", "prune", "send", "messages", "optouts")

STATUS_EPILOG = """\
Exit 0 whenever the store can be read, even with failing numbers or dead
deliveries (read the output for those); 1 when it cannot be read.

--json prints one object. Times are ISO 8601 UTC strings or null, numbers are
masked unless log.pii; keys may be added, never renamed or removed:
  {"now": T,
   "numbers": [{"number", "last_poll_at", "last_success_at",
                "consecutive_failures", "last_error",
                "lease_owner", "lease_expires_at"}],
   "webhooks": [{"name", "configured", "pending", "delivered", "dead",
                 "oldest_pending_at", "last_error", "last_error_at"}],
   "outbound": {"pending", "sent", "failed", "unknown", "refused"}}
A lease is shown only while unexpired; a number never polled has nulls.
"""

LIST_EPILOG = """\
Newest first. Message and reply texts are never printed.

--json prints one object (times ISO 8601 UTC or null; keys may be added):
  {"now": T,
   "deliveries": [{"id", "webhook", "state", "attempts", "webhook_id", "number",
                   "provider_id", "queued_at", "next_attempt_at",
                   "last_attempt_at", "delivered_at", "last_status",
                   "last_error",
                   "reply": null | {"id", "state", "provider_ids": [str]},
                   "event", "outbound_id"}]}
An outbound event (sms.sent, sms.failed) has an empty number and provider_id.
"""

REPLAY_EPILOG = """\
Each delivery becomes pending and due now; its give-up window restarts, its
attempts count and its webhook-id are kept (receivers see the same id). A
delivered one is sent again: a deliberate re-send. An unknown id changes
nothing and exits 2. A running relay picks them up within 5 s.
"""


def _add_admin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """status, deliveries list|replay, prune, send, optouts list|add|remove and messages
    show."""
    raw = argparse.RawDescriptionHelpFormatter
    status = sub.add_parser(
        "status",
        help="numbers, webhooks and outbound SMS as the store sees them",
        description="Show each number's polls and lease, each webhook's queue, and outbound SMS.",
        epilog=STATUS_EPILOG,
        formatter_class=raw,
    )
    _add_config(status)
    status.add_argument("--json", action="store_true", help="one JSON object, for scripts")

    deliveries = sub.add_parser("deliveries", help="list deliveries, or replay them")
    actions = deliveries.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list", help="the latest deliveries", epilog=LIST_EPILOG, formatter_class=raw
    )
    _add_config(listing)
    listing.add_argument("--state", choices=("pending", "dead", "delivered"))
    listing.add_argument("--webhook", metavar="NAME", help="only deliveries to this webhook")
    listing.add_argument("--limit", type=int, default=50, metavar="N", help="at most N (50)")
    listing.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    replay = actions.add_parser(
        "replay",
        help="make deliveries pending again now",
        usage="%(prog)s [--config PATH] (ID [ID ...] | --dead [--webhook NAME] [--since DURATION])",
        epilog=REPLAY_EPILOG,
        formatter_class=raw,
    )
    _add_config(replay)
    replay.add_argument("ids", nargs="*", type=int, metavar="ID", help="delivery ids")
    replay.add_argument("--dead", action="store_true", help="every dead delivery (filtered below)")
    replay.add_argument("--webhook", metavar="NAME", help="with --dead: only to this webhook")
    replay.add_argument(
        "--since", metavar="DURATION", help="with --dead: last attempt within this (e.g. 2h)"
    )

    prune = sub.add_parser("prune", help="delete settled messages older than store.retention")
    _add_config(prune)

    send = sub.add_parser(
        "send",
        help="send an SMS now, straight through the API",
        description="Send one SMS through the Aatrox API (not through the store's queue) and "
        "print the provider's id(s), one per line. One --to uses /sms/send (or "
        "/sms/send/disclaimer); several use one /sms/send/bulk request, which has no "
        "disclaimer variant, so --disclaimer takes a single --to. Recipients who opted out "
        "(STOP) of SMS from --from are not sent to. Exit 1 on an API error or a refused "
        "recipient.",
    )
    _add_config(send)
    send.add_argument("--from", dest="sender", required=True, metavar="NUMBER")
    send.add_argument("--to", action="append", required=True, metavar="NUMBER")
    text = send.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help="the text (other users of the host can see it in ps)")
    text.add_argument(
        "--text-file",
        metavar="PATH",
        help="read the text from PATH, UTF-8, trailing line breaks dropped; - is standard input",
    )
    send.add_argument(
        "--disclaimer", action="store_true", help="append the sender's disclaimer (one --to only)"
    )

    optouts = sub.add_parser("optouts", help="list, add or remove opt-outs (STOP)")
    optout_actions = optouts.add_subparsers(dest="action", metavar="ACTION", required=True)
    listed = optout_actions.add_parser("list", help="every opt-out, by number")
    _add_config(listed)
    listed.add_argument("--number", metavar="NUMBER", help="only opt-outs from this number")
    listed.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    for action, summary in (("add", "opt a sender out"), ("remove", "opt a sender in again")):
        change = optout_actions.add_parser(action, help=f"{summary} of SMS from a number")
        _add_config(change)
        change.add_argument("--number", required=True, metavar="NUMBER", help="the relay's number")
        change.add_argument("--sender", required=True, metavar="NUMBER", help="their number")

    messages = sub.add_parser("messages", help="look up a message in the API")
    message_actions = messages.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = message_actions.add_parser(
        "show",
        help="one message from the details endpoint",
        description="Print one message, its numbers and text in full: for your terminal, "
        "not for a log.",
    )
    _add_config(show)
    show.add_argument("id", metavar="ID", help="the provider's message id")
    show.add_argument("--number", metavar="NUMBER", help="the number it was received on")
    show.add_argument("--json", action="store_true", help="one JSON object, for scripts")


def _admin(config: Config, args: argparse.Namespace) -> int:
    from relay import admin
    from relay.config import parse_duration

    command: str = args.command
    if command == "status":
        out = admin.status_report(config, as_json=args.json)
    elif command == "deliveries" and args.action == "list":
        out = admin.deliveries_report(
            config, state=args.state, webhook=args.webhook, limit=args.limit, as_json=args.json
        )
    elif command == "deliveries":
        since = None if args.since is None else parse_duration(args.since, "--since")
        out = admin.replay_report(
            config, args.ids, dead=args.dead, webhook=args.webhook, since=since
        )
    elif command == "prune":
        out = admin.prune_report(config)
    elif command == "optouts" and args.action == "list":
        out = admin.optouts_report(config, number=args.number, as_json=args.json)
    elif command == "optouts":
        add = args.action == "add"
        out = admin.change_optout(config, number=args.number, sender=args.sender, add=add)
    elif command == "send":
        text = args.text if args.text_file is None else _read_text_file(args.text_file)
        report = asyncio.run(
            admin.send_report(config, args.sender, args.to, text, disclaimer=args.disclaimer)
        )
        if report.ids:
            print("\n".join(report.ids))
        elif report.sent:
            print("sent; the provider answered no id", file=sys.stderr)
        if report.refused:
            _error(report.refusal())
            return EXIT_FAILED
        return EXIT_OK
    else:
        out = asyncio.run(
            admin.message_report(config, args.id, number=args.number, as_json=args.json)
        )
    if out:
        print(out)
    return EXIT_OK


#: ``send --text-file`` reads at most this many bytes: far more than a sendable text
#: (:data:`relay.outbox.MAX_TEXT` characters, up to four UTF-8 bytes each).
TEXT_FILE_LIMIT = 64 * 1024
#: ``--text-file`` names standard input so.
STDIN_PATH = "-"


def _read_text_file(path: str) -> str:
    """The text of ``send --text-file PATH`` (``-``: standard input), its trailing line
    breaks dropped; ConfigError naming ``--text-file`` when it cannot be read."""
    where = "standard input" if path == STDIN_PATH else path
    try:
        if path == STDIN_PATH:
            raw = sys.stdin.buffer.read(TEXT_FILE_LIMIT + 1)
        else:
            with open(path, "rb") as handle:
                raw = handle.read(TEXT_FILE_LIMIT + 1)
    except OSError as exc:
        msg = f"--text-file: cannot read {where}: {exc.strerror or exc}"
        raise ConfigError(msg) from None
    if len(raw) > TEXT_FILE_LIMIT:
        msg = f"--text-file: {where} is larger than {TEXT_FILE_LIMIT // 1024} KiB: not an SMS"
        raise ConfigError(msg)
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        msg = f"--text-file: {where} is not UTF-8 text"
        raise ConfigError(msg) from None
    if not text.strip():
        msg = f"--text-file: {where} holds no text"
        raise ConfigError(msg)
    return text
