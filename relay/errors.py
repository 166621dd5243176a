"""Every exception the relay raises on purpose.

Each class's docstring is its default message. ``str(exc)`` is always a single
line fit for an operator: it names what is wrong and never carries a token or
message text.
"""

from __future__ import annotations


class RelayError(Exception):
    """aatrox-relay failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(RelayError):
    """The configuration is invalid."""


class InvalidNumber(RelayError):
    """Not a phone number."""


class SignatureError(RelayError):
    """The webhook signature does not verify."""


class StoreError(RelayError):
    """The store failed."""


class ApiError(RelayError):
    """The Aatrox API request failed."""

    #: HTTP status of the answer, when there was one.
    status: int | None = None
    #: Whether trying the same request later may succeed.
    retryable: bool = True

    def __init__(self, message: str | None = None, *, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class ApiBadRequest(ApiError):
    """The Aatrox API rejected the request's parameters (400)."""

    status = 400
    retryable = False


class ApiUnauthorized(ApiError):
    """The Aatrox API rejected the token (401)."""

    status = 401


class ApiNotFound(ApiError):
    """The Aatrox API has no such resource (404)."""

    status = 404
    retryable = False


class ApiRateLimited(ApiError):
    """The Aatrox API is rate limiting us (429)."""

    status = 429

    def __init__(self, message: str | None = None, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        #: Seconds the API asked us to wait, when it said.
        self.retry_after = retry_after


class ApiServerError(ApiError):
    """The Aatrox API failed on its side (5xx)."""


class ApiTimeout(ApiError):
    """The Aatrox API did not answer in time."""


class ApiConnectionError(ApiError):
    """Could not connect to the Aatrox API."""


class ApiOutcomeUnknown(ApiError):
    """The request went out but no usable answer came back: the API may have acted on it."""

    #: Raised only for requests that must not be repeated blindly (sending an SMS):
    #: trying again may send the SMS twice.
    retryable = False


class ApiInvalidResponse(ApiError):
    """The Aatrox API answered with something that is not the expected JSON."""


class ApiResponseTooLarge(ApiInvalidResponse):
    """The Aatrox API answer is larger than api.max_response_bytes."""
