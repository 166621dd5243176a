"""The bench's peers, in one process of their own: the API simulator and a webhook sink.

``python -m bench.peers [--listing-limit N] [--rate-limit R]`` starts a
:class:`relay.testing.simulator.Simulator` (counting the receive requests it serves;
with ``--rate-limit``, answering 429 past R requests a second per token) and a
minimal webhook receiver on :mod:`relay.httpd`, prints one JSON line ``{"api", "hook",
"control", "token", "secret"}`` on stdout, and serves until stdin closes or SIGTERM.

The receiver verifies each signature, records the first arrival of each message id
(``data.id``) on :func:`time.monotonic` (one clock for every process of the machine),
and answers 204. Control endpoints, on the receiver's port::

    POST /_bench/inject   {"numbers", "count", "sender"}: count messages, round-robin
    POST /_bench/traffic  {"numbers", "rate", "seconds", "sender"}: inject at a steady
                          rate in the background, each on a random number, noting when
    GET  /_bench/stats    counters and first/last times (see :meth:`Sink.stats`); last_new
                          is when the latest first arrival of a message id came;
                          first_polls is when each number (``to``) was first polled
    GET  /_bench/wait?unique=N&timeout=S   the stats once N distinct messages arrived
    GET  /_bench/latencies  arrival minus injection, per traffic message delivered
    POST /_bench/conversations  {"numbers", "seconds", "min_gap", "max_gap", "start_within"}:
                          one conversation per number, each with a sender of its own: a
                          first message within ``start_within`` s, then each next one
                          ``min_gap`` to ``max_gap`` s after the previous one reached the
                          webhook (the customer answers the app's reply), for ``seconds``
    GET  /_bench/conversations  latencies of the first messages and of the others
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import random
import signal
import sys
import time
from typing import Any

from relay.errors import SignatureError
from relay.http import Request, Response, json_response
from relay.httpd import HttpServer
from relay.signing import verify
from relay.testing.faults import RateLimit
from relay.testing.simulator import Simulator

TOKEN = "bench-token"
KEY = b"bench-webhook-key-0123456789abcd"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
HOOK_PATH = "/hook"
CONTROL_PREFIX = "/_bench/"
RECEIVE_PATH = "/api/v2/sms/receive"
#: Longest a /_bench/wait may be asked to wait.
MAX_WAIT = 3600.0
TRAFFIC_SEED = 20261124


class CountingSimulator(Simulator):
    """The project's simulator, noting when it serves receive requests."""

    def __init__(self, *, listing_limit: int) -> None:
        super().__init__(token=TOKEN, listing_limit=listing_limit)
        self.receives = 0
        self.first_receive: float | None = None
        self.last_receive: float | None = None
        #: When each number (the ``to`` of a receive request) was first polled.
        self.first_polls: dict[str, float] = {}

    async def _handle(self, request: Request) -> Response:
        if request.path == RECEIVE_PATH:
            now = time.monotonic()
            self.receives += 1
            if self.first_receive is None:
                self.first_receive = now
            self.last_receive = now
            self.first_polls.setdefault(request.query.get("to", ""), now)
        return await super()._handle(request)


class Sink:
    """The webhook receiver and the control endpoints."""

    def __init__(self, simulator: CountingSimulator) -> None:
        self.simulator = simulator
        self.arrivals: dict[str, float] = {}
        self.injected_at: dict[str, float] = {}
        self.webhooks = 0
        self.bad = 0
        self.first_webhook: float | None = None
        self.last_webhook: float | None = None
        self.last_new: float | None = None
        self.injected = 0
        self.traffic_done = True
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        #: Conversation messages: id -> (conversation, injected at, first of its own).
        self.said: dict[str, tuple[int, float, bool]] = {}
        #: Per conversation: (number, sender, ends at); gaps drawn from ``_talk``.
        self._conversations: list[tuple[str, str, float]] = []
        self._gaps = (2.0, 10.0)
        self._talk = random.Random(TRAFFIC_SEED)

    async def handle(self, request: Request) -> Response:
        """Route one request."""
        if request.path == HOOK_PATH and request.method == "POST":
            return self._webhook(request)
        if request.path.startswith(CONTROL_PREFIX):
            try:
                return await self._control(request)
            except (KeyError, TypeError, ValueError) as exc:
                return json_response({"error": f"{type(exc).__name__}: {exc}"}, 400)
        return json_response({"error": "not found"}, 404)

    def _webhook(self, request: Request) -> Response:
        now = time.monotonic()
        self.webhooks += 1
        try:
            verify(KEY, request.headers, request.body, time.time())
            message_id = str(json.loads(request.body)["data"]["id"])
        except (SignatureError, ValueError, KeyError, TypeError):
            self.bad += 1
            return Response(status=400)
        if self.first_webhook is None:
            self.first_webhook = now
        self.last_webhook = now
        if message_id not in self.arrivals:
            self.arrivals[message_id] = now
            self.last_new = now
            self._wake()
            if message_id in self.said:
                self._answered(self.said[message_id][0])
        return Response(status=204)

    def _answered(self, conversation: int) -> None:
        """The app got a conversation's message: its customer writes again in a while,
        unless the conversation is over by then."""
        ends = self._conversations[conversation][2]
        delay = self._talk.uniform(*self._gaps)
        if time.monotonic() + delay < ends:
            loop = asyncio.get_running_loop()
            loop.call_later(delay, self._say, conversation, False)

    def _say(self, conversation: int, first: bool) -> None:
        number, sender, _ends = self._conversations[conversation]
        message = self.simulator.inject(sender, number, f"c{conversation}")
        self.said[str(message.id)] = (conversation, time.monotonic(), first)
        self.injected += 1

    def _converse(self, numbers: list[str], body: dict[str, Any]) -> None:
        """Start one conversation per number (see the module docstring)."""
        self._gaps = (float(body["min_gap"]), float(body["max_gap"]))
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        for number in numbers:
            start = self._talk.uniform(0.0, float(body["start_within"]))
            sender = f"+6149{len(self._conversations):07d}"
            self._conversations.append((number, sender, now + start + float(body["seconds"])))
            loop.call_later(start, self._say, len(self._conversations) - 1, True)

    def conversation_latencies(self) -> dict[str, object]:
        """Arrival minus injection of conversation messages, firsts and others apart;
        counts include the undelivered."""
        firsts: list[float] = []
        others: list[float] = []
        for message_id, (_conv, at, first) in self.said.items():
            if message_id in self.arrivals:
                (firsts if first else others).append(self.arrivals[message_id] - at)
        said_first = sum(1 for _c, _a, first in self.said.values() if first)
        return {
            "firsts": firsts,
            "others": others,
            "said_firsts": said_first,
            "said_others": len(self.said) - said_first,
            "done": all(time.monotonic() >= ends for _n, _s, ends in self._conversations),
        }

    def _wake(self) -> None:
        unique = len(self.arrivals)
        keep: list[tuple[int, asyncio.Future[None]]] = []
        for target, future in self._waiters:
            if unique >= target:
                if not future.done():
                    future.set_result(None)
            else:
                keep.append((target, future))
        self._waiters = keep

    def stats(self) -> dict[str, object]:
        """Counters, and first/last times on :func:`time.monotonic` (None: not yet)."""
        sim = self.simulator
        return {
            "now": time.monotonic(),
            "receives": sim.receives,
            "first_receive": sim.first_receive,
            "last_receive": sim.last_receive,
            "first_polls": sim.first_polls,
            "api_requests": sum(sim.requests.values()),
            "limited": sim.limited,
            "polls": dict(sim.polls),
            "webhooks": self.webhooks,
            "unique": len(self.arrivals),
            "duplicates": self.webhooks - self.bad - len(self.arrivals),
            "bad": self.bad,
            "first_webhook": self.first_webhook,
            "last_webhook": self.last_webhook,
            "last_new": self.last_new,
            "injected": self.injected,
            "traffic_done": self.traffic_done,
        }

    async def _control(self, request: Request) -> Response:
        route = (request.method, request.path[len(CONTROL_PREFIX) :])
        if route == ("GET", "stats"):
            return json_response(self.stats())
        if route == ("GET", "wait"):
            await self._wait(int(request.query["unique"]), float(request.query["timeout"]))
            return json_response(self.stats())
        if route == ("GET", "latencies"):
            latencies = [
                self.arrivals[mid] - at
                for mid, at in self.injected_at.items()
                if mid in self.arrivals
            ]
            return json_response({"injected": len(self.injected_at), "latencies": latencies})
        if route == ("GET", "conversations"):
            return json_response(self.conversation_latencies())
        body = json.loads(request.body)
        numbers = [str(n) for n in body["numbers"]]
        sender = str(body.get("sender", "+61412345678"))
        if route == ("POST", "inject"):
            first = last = None
            for index in range(int(body["count"])):
                message = self.simulator.inject(sender, numbers[index % len(numbers)], f"b{index}")
                first = first or message.id
                last = message.id
            self.injected += int(body["count"])
            return json_response({"first_id": first, "last_id": last}, 201)
        if route == ("POST", "conversations"):
            self._converse(numbers, body)
            return json_response({"started": len(numbers)}, 202)
        if route == ("POST", "traffic"):
            task = asyncio.create_task(
                self._traffic(numbers, float(body["rate"]), float(body["seconds"]), sender)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return json_response({"started": True}, 202)
        return json_response({"error": "no such control endpoint"}, 404)

    async def _wait(self, unique: int, timeout: float) -> None:
        if len(self.arrivals) >= unique:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((unique, future))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(future, min(timeout, MAX_WAIT))

    async def _traffic(self, numbers: list[str], rate: float, seconds: float, sender: str) -> None:
        """Inject ``rate`` messages a second for ``seconds``, each on a number picked at random.

        Random numbers (seeded, so runs are alike) put each message at a random point of
        its number's poll cycle, as real traffic would be.
        """
        self.traffic_done = False
        total = round(rate * seconds)
        pick = random.Random(TRAFFIC_SEED)
        start = time.monotonic()
        try:
            for index in range(total):
                delay = start + index / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                message = self.simulator.inject(sender, pick.choice(numbers), f"t{index}")
                self.injected_at[str(message.id)] = time.monotonic()
                self.injected += 1
        finally:
            self.traffic_done = True


async def serve(listing_limit: int, rate_limit: float | None = None) -> None:
    """Run the peers until stdin closes or SIGTERM/SIGINT."""
    simulator = CountingSimulator(listing_limit=listing_limit)
    if rate_limit is not None:
        simulator.rate_limit = RateLimit(rate_limit)
    sink = Sink(simulator)
    hooks = HttpServer(sink.handle)
    await simulator.start()
    await hooks.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_reader(sys.stdin.fileno(), stop.set)  # the bench went away: stdin hits EOF
    hello = {
        "api": simulator.url,
        "hook": hooks.url + HOOK_PATH,
        "control": hooks.url,
        "token": TOKEN,
        "secret": SECRET,
    }
    print(json.dumps(hello), flush=True)
    try:
        await stop.wait()
    finally:
        await hooks.close()
        await simulator.close()


def main() -> int:
    """``python -m bench.peers``."""
    parser = argparse.ArgumentParser(prog="python -m bench.peers")
    parser.add_argument("--listing-limit", type=int, default=1000)
    parser.add_argument("--rate-limit", type=float, help="429 past this many requests/s a token")
    args = parser.parse_args()
    asyncio.run(serve(args.listing_limit, args.rate_limit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
