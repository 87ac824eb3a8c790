"""Errors the server answers with a 4xx JSON body (``{"detail": message}``): each carries its
HTTP status, and its message names the problem and what to do about it."""

from __future__ import annotations


class ServingError(Exception):
    """A request the server refuses; ``status`` is the HTTP status of the answer."""

    status = 400

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


class NotFoundError(ServingError):
    status = 404


class UnsupportedFileError(ServingError):
    status = 415


class TooLargeError(ServingError):
    status = 413


class BusyError(ServingError):
    status = 503
