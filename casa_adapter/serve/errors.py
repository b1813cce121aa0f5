"""`ServeError`: a request the server refuses, with the HTTP status that says why."""


class ServeError(Exception):
    """Refused input: `status` is the HTTP status (4xx), `message` what was wrong and with what."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


__all__ = ["ServeError"]
