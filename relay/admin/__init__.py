"""Operator commands: status, deliveries list and replay, prune, send, messages show, check.

Each command has a ``*_report`` function that opens what it needs, does the work and
returns the text to print: ``overview`` (status), ``deliveries`` (list and replay),
``prune``, ``send`` (send and messages show) and ``check`` (the store and the webhooks).
Every statement they run against the store is a method of :class:`~relay.store.Store`
(in ``relay/store/operator.py``); ``render`` is their formatting toolkit. Numbers are
masked as in the logs unless ``log.pii``. Message and reply texts are never printed,
except by ``messages show``, whose point is to show one message to the operator who
asked for it.

The ``--json`` documents are the store's records (``relay/store/operator.py``) as
dicts, times as ISO 8601 UTC strings (or null); their shapes are documented in each
command's ``--help``, and keys are only ever added.
"""

from __future__ import annotations

from relay.admin.check import check_store, probe_webhook, shown_store_url
from relay.admin.deliveries import deliveries_report, replay_report
from relay.admin.optouts import change_optout, optouts_report
from relay.admin.overview import status, status_report, status_text
from relay.admin.prune import prune_report
from relay.admin.render import ago, printable
from relay.admin.send import message_report, send_report

__all__ = [
    "ago",
    "change_optout",
    "check_store",
    "deliveries_report",
    "message_report",
    "optouts_report",
    "printable",
    "probe_webhook",
    "prune_report",
    "replay_report",
    "send_report",
    "shown_store_url",
    "status",
    "status_report",
    "status_text",
]
