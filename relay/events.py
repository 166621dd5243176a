"""What the pipeline reports as it works: polls, messages, deliveries, outbound SMS.

The poller, the dispatcher and the outbox call an :class:`Events`; the daemon
passes one that feeds metrics, alerts and the systemd status line. The base
class does nothing, so tests and ``poll-once`` need none of that.
"""

from __future__ import annotations


class Events:
    """No-op receiver of pipeline events; override what you need."""

    def poll_succeeded(self, number: str, new: int) -> None:
        """A poll of ``number`` went through and found ``new`` messages."""

    def poll_failed(self, number: str, error: str, *, unauthorized: bool = False) -> None:
        """A poll of ``number`` failed; ``unauthorized`` when the API rejected the token."""

    def poll_gap(self, number: str, listed: int) -> None:
        """A listing of ``listed`` items on ``number`` held nothing seen before: messages
        older than its oldest item may have been missed."""

    def poll_gap_closed(self, number: str) -> None:
        """A listing on ``number`` overlapped what was seen again: the gap episode is over."""

    def messages_unresolved(self, number: str, count: int) -> None:
        """``count`` listed messages on ``number`` could not be completed from their details
        for longer than the relay waits (reported once each; still retried)."""

    def delivered(self, webhook: str, latency: float | None) -> None:
        """A webhook accepted a message, ``latency`` seconds after the provider received it
        (None for a replayed delivery, whose wait says nothing of delivery speed)."""

    def delivery_failed(self, webhook: str, error: str, *, dead: bool) -> None:
        """An attempt failed; ``dead`` when it was the last."""

    def circuit_changed(self, webhook: str, is_open: bool) -> None:
        """``webhook``'s circuit opened (``is_open``) or closed again."""

    def outbound(self, outcome: str) -> None:
        """An outbound SMS was sent ("sent"), rescheduled ("retry") or given up ("failed")."""

    def store_failed(self, error: str) -> None:
        """A store call failed."""

    def unexpected(self, exc: BaseException) -> None:
        """Something raised that nothing expected: a bug to report."""
