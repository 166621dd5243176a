"""aatrox-relay: poll the Aatrox SMS API v2 and deliver inbound SMS as signed webhooks."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
