"""Adaptive polling: each number's interval follows its traffic.

With ``poll.min_interval`` set, a poll that finds a new message puts its number on
``min_interval`` for ``active_for`` (each new message starts that window again). After
the window, every poll that finds nothing doubles the interval, up to the number's own
interval (``[[numbers]] interval``, else ``poll.interval``): the ceiling, where a quiet
number stays. From 1 s to 30 s that is 2, 4, 8, 16, 30: five polls, about half a minute.
Doubling per poll, not per ``active_for``, so a conversation that has ended gives its
share of the budget back within a ceiling's time.

Without ``poll.min_interval`` the interval is the ceiling, always. Pure arithmetic on
an injected monotonic clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.clock import Clock
from relay.config import NumberConfig, PollConfig

#: After ``active_for``, each poll that finds nothing multiplies the interval by this.
RELAX_FACTOR = 2.0


@dataclass(frozen=True)
class Cadence:
    """How one number's interval may move."""

    #: The interval while the number is active (never above ``ceiling``).
    floor: float
    #: The interval of a quiet number.
    ceiling: float
    #: How long after its last new message a number stays at ``floor``.
    active_for: float


def cadence(poll: PollConfig, number: NumberConfig) -> Cadence | None:
    """``number``'s cadence under ``poll``; None without adaptive polling."""
    if poll.min_interval is None:
        return None
    return Cadence(min(poll.min_interval, number.interval), number.interval, poll.active_for)


class Pace:
    """One number's current interval, moved by what its polls find."""

    def __init__(self, interval: float, rule: Cadence | None, clock: Clock) -> None:
        self.rule = rule
        self.clock = clock
        #: The interval the number is polled at now.
        self.current = interval if rule is None else rule.ceiling
        #: Monotonic time until which the number stays at the floor; None: not active.
        self.active_until: float | None = None

    def observe(self, found: bool) -> float:
        """A poll went through and found new messages (``found``) or none: the interval
        until the next poll."""
        rule = self.rule
        if rule is None:
            return self.current
        now = self.clock.monotonic()
        if found:
            self.active_until = now + rule.active_for
            self.current = rule.floor
        elif self.active_until is not None and now < self.active_until:
            self.current = rule.floor
        else:
            self.active_until = None
            self.current = min(rule.ceiling, max(self.current * RELAX_FACTOR, rule.floor))
        return self.current

    def retune(self, interval: float, rule: Cadence | None) -> None:
        """A reload changed the cadence: keep the activity, move the interval into bounds."""
        self.rule = rule
        if rule is None:
            self.current, self.active_until = interval, None
        else:
            self.current = min(max(self.current, rule.floor), rule.ceiling)
