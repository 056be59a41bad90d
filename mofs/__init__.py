"""mofs: a FUSE file system whose contents are served by memory-object pagers.

The protocol core (``messages``, ``pages``, ``memory_object``, ``cache``) has no I/O at
all; ``kernel`` (trio) and ``fs`` (pyfuse3) are the edges around it.
"""

from .cache import Cache as Cache
from .errors import LocalProtocolError as LocalProtocolError
from .errors import PageError as PageError
from .errors import PagerFailed as PagerFailed
from .errors import RemoteProtocolError as RemoteProtocolError
from .errors import UserError as UserError
from .memory_object import MemoryObject as MemoryObject
from .memory_object import Outbox as Outbox
from .pages import Page as Page
from .pages import PageState as PageState

__all__ = [
    "Cache",
    "LocalProtocolError",
    "MemoryObject",
    "Outbox",
    "Page",
    "PageError",
    "PageState",
    "PagerFailed",
    "RemoteProtocolError",
    "UserError",
]
