"""Who is to blame: the cache (our bug), the pager (its fault), or the user (a one-line message).

The split follows h11: a *local* protocol error means mofs itself tried something the
protocol forbids and should fail loudly; a *remote* protocol error means a pager sent
nonsense, which fails that pager's waiters with EIO and marks it failed.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class; raise one of the two subclasses."""

    def __init__(self, msg: str) -> None:
        if type(self) is ProtocolError:
            raise TypeError("raise LocalProtocolError or RemoteProtocolError")
        super().__init__(msg)


class LocalProtocolError(ProtocolError):
    """The cache tried to do something the protocol forbids: a bug in mofs."""


class RemoteProtocolError(ProtocolError):
    """The pager sent a message the protocol forbids in the current state."""


class PagerFailed(Exception):
    """A pager died, timed out or broke the protocol; waiting operations get EIO."""


class PagerTimeout(PagerFailed):
    """A pager did not answer in time; the object it was asked about is failed."""


class PageError(Exception):
    """A pager answered ``data_error``: the read fails with ``errno``."""

    def __init__(self, errno: int, msg: str = "") -> None:
        super().__init__(msg or f"pager reported errno {errno}")
        self.errno = errno


class UserError(Exception):
    """A problem the user can fix; the CLI prints it as one line and exits with ``exit_code``."""

    def __init__(self, msg: str, exit_code: int = 1) -> None:
        super().__init__(msg)
        self.exit_code = exit_code


class StoreError(UserError):
    """The store file is missing, foreign, corrupt or from a newer mofs."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg, exit_code=3)
