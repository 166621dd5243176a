"""The loopback peers' base: a :class:`Served` thing answers HTTP on its own server."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import TypeVar

from relay.http import DEFAULT_HOST, Request, Response
from relay.httpd import HttpServer

ServedT = TypeVar("ServedT", bound="Served")


class Served(ABC):
    """Something that answers HTTP on its own loopback server (the simulator, the
    webhook receiver): ``async with Thing() as t: t.url``."""

    _server: HttpServer | None = None

    @abstractmethod
    async def _handle(self, request: Request) -> Response:
        """Answer one request."""

    @property
    def url(self) -> str:
        """The base URL, once started."""
        if self._server is None:
            msg = f"the {type(self).__name__} is not started"
            raise RuntimeError(msg)
        return self._server.url

    async def start(self, host: str = DEFAULT_HOST, port: int = 0) -> None:
        """Listen on ``host``:``port`` (0 picks a free port)."""
        if self._server is None:
            server = HttpServer(self._handle, host, port)
            await server.start()
            self._server = server

    async def close(self) -> None:
        """Stop listening and drop open connections."""
        if self._server is not None:
            await self._server.close()
            self._server = None

    async def __aenter__(self: ServedT) -> ServedT:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
