"""Errors that reach users: each names what was wrong and where."""

from __future__ import annotations


class ChorusError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


def unreadable(exc: OSError) -> str:
    """Why a file cannot be read, in our words (not the operating system's sentence with its errno): the CLI's
    options, import and mapping files, journey files."""
    if isinstance(exc, FileNotFoundError):
        return "does not exist"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file"
    if isinstance(exc, PermissionError):
        return "cannot be read (permission denied)"
    return "cannot be read"


class NotFound(ChorusError):
    status = 404
    code = "not_found"


class Unauthorized(ChorusError):
    status = 401
    code = "unauthorized"


class Conflict(ChorusError):
    status = 409
    code = "conflict"


class Saturated(ChorusError):
    status = 429
    code = "saturated"

    def __init__(self, message: str, retry_after: int = 5):
        super().__init__(message)
        self.retry_after = retry_after


class UnsupportedMediaType(ChorusError):
    """A body in a format the endpoint does not read (text/plain or a form where JSON is expected)."""

    status = 415
    code = "unsupported_media_type"


class NotConfigured(ChorusError):
    """The server is not set up for what was asked (a secret missing from its environment, or unusable): a 503,
    the operator's to fix, not the caller's. The message says what is missing in general terms; the reason, which
    names the variable and the setting, goes to the server's log only."""

    status = 503
    code = "not_configured"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        if code:
            self.code = code


# A validator's message names its field first, as one word: "settings.x must be ...", "settings.default_region:
# 'XX' is not a known region". (Tried this session: cutting at ": " or " is " for names holding a space; validators
# word their messages too many ways for that, and a review and CI found wrong fields. Left as it was.)


def field_of(message: str) -> str:
    """The field a validator's ``ValueError`` message starts by naming: its first word."""
    return message.split(" ", 1)[0].rstrip(":")
