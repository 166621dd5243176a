"""The project's own loopback peers and fakes: not part of the running relay.

Here live :mod:`~relay.testing.simulator` (the Aatrox API v2 in memory, with its
:mod:`~relay.testing.wire` formats, :mod:`~relay.testing.faults` and
:mod:`~relay.testing.payloads`), :mod:`~relay.testing.receiver` (a webhook consumer that
verifies signatures), their base :mod:`~relay.testing.served`, the
:mod:`~relay.testing.clock` that only moves when told to, and the
:mod:`~relay.testing.demo`. The tests and the benchmark (``bench/``) use them; they are
installed because ``aatrox-relay simulate`` and ``aatrox-relay demo`` do too. The
daemon's own modules never import them.
"""
