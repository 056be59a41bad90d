"""Pagers: the managers of mofs's memory objects, and how to pick one by URL.

A pager URL is ``scheme:rest``. The built-in schemes are ``sqlite:`` (pages in the
mofs store, or in the database named by ``rest``), ``memory:`` (anonymous memory,
precious pages swapped to a temporary SQLite file, or to ``rest`` to keep them),
``dir:PATH`` (one plain file per object in the directory PATH, re-read when another
program changes it) and ``fsspec+PROTO://...`` (one file per object in any fsspec file
system, e.g. ``fsspec+file:///srv/x``, ``fsspec+memory://b/p``, ``fsspec+s3://b/p``);
an installed package adds a scheme through the ``mofs.pagers`` entry-point group, whose
entry point names a class called with ``rest`` as its single argument. A pager that is
not packaged can be named directly: ``python:MODULE:CLASS`` or ``python:MODULE:CLASS:ARG``
imports MODULE (from the current directory too) and calls CLASS, with ARG if given.
``unix:PATH`` and ``tcp:HOST:PORT`` reach a pager served by ``mofs serve-pager`` in
another process or on another host (``pagers/remote.py``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys

from mofs.errors import UserError

from .directory import DirectoryPager as DirectoryPager
from .example import DictPager as DictPager
from .fsspec_pager import FsspecPager as FsspecPager
from .kit import Pager as Pager
from .memory import MemoryPager as MemoryPager
from .remote import RemotePager as RemotePager
from .sqlite import SQLitePager as SQLitePager

__all__ = ["DictPager", "DirectoryPager", "FsspecPager", "MemoryPager", "Pager", "RemotePager",
           "SQLitePager", "installed_pagers", "open_pager"]

_BUILTIN = ("dir", "fsspec+PROTO", "memory", "python", "sqlite", "tcp", "unix")
_FSSPEC = "fsspec+"


_DESCRIPTIONS = {
    "sqlite": "sqlite:[PATH]  pages in the mofs store (default) or another SQLite file",
    "memory": "memory:[PATH]  anonymous memory: precious pages, swapped to SQLite (PATH keeps it)",
    "dir": "dir:PATH  one plain file per object in a directory, re-read when others change it",
    "fsspec+PROTO": "fsspec+PROTO://...  one file per object in any fsspec file system",
    "python": "python:MODULE:CLASS[:ARG]  a pager class that is not installed as a package",
    "unix": "unix:PATH  a pager served by 'mofs serve-pager' on a Unix socket",
    "tcp": "tcp:HOST:PORT  a pager served by 'mofs serve-pager' over TCP",
}


def installed_pagers() -> list[tuple[str, str]]:
    """``(scheme, description)`` of the built-in schemes and of installed plug-ins."""
    found = [(scheme, _DESCRIPTIONS[scheme]) for scheme in _BUILTIN]
    for ep in sorted(importlib.metadata.entry_points(group="mofs.pagers"), key=lambda e: e.name):
        dist = f" (package {ep.dist.name})" if ep.dist is not None else ""
        found.append((ep.name, f"{ep.name}:...  plug-in {ep.value}{dist}"))
    return found


def open_pager(url: str | None, store_path: str) -> Pager | RemotePager:
    """The pager named by ``url``; ``None`` means the store's own SQLite pager.

    Raises :class:`~mofs.errors.UserError` (exit code 2) for an unknown scheme, and
    (exit code 1) for a ``unix:`` or ``tcp:`` pager that cannot be reached.
    """
    if url is None:
        return SQLitePager(store_path)
    scheme, _, rest = url.partition(":")
    if scheme == "sqlite":
        return SQLitePager(rest or store_path)
    if scheme == "memory":
        return MemoryPager(rest or None)
    if scheme == "python":
        return _python_pager(url, rest)
    if scheme == "dir":
        if not rest:
            raise UserError(f"pager {url!r}: write dir:PATH", exit_code=2)
        return DirectoryPager(rest)
    if scheme.startswith(_FSSPEC):
        return _fsspec_pager(url)
    if scheme in ("unix", "tcp"):
        return RemotePager(url)  # connects now: a missing pager is an error at mount time
    plugins = {ep.name: ep for ep in importlib.metadata.entry_points(group="mofs.pagers")}
    if scheme in plugins:
        try:
            factory = plugins[scheme].load()
        except Exception as exc:
            raise UserError(f"pager {url!r}: cannot load {plugins[scheme].value}: {exc}",
                            exit_code=2) from exc
        try:
            return factory(rest)
        except Exception as exc:  # the plug-in refused its argument: the user's to fix
            raise UserError(f"pager {url!r}: {type(exc).__name__}: {exc}", exit_code=2) \
                from exc
    known = ", ".join(f"{name}:" for name in sorted(set(_BUILTIN) | set(plugins)))
    raise UserError(f"unknown pager {url!r}: known schemes are {known}", exit_code=2)


def _fsspec_pager(url: str) -> Pager:
    """``fsspec+PROTO://...``: the fsspec file system PROTO; nothing is touched yet."""
    inner = url[len(_FSSPEC):]
    if not inner.partition(":")[0]:
        raise UserError(f"pager {url!r}: write fsspec+PROTO://PATH", exit_code=2)
    try:
        return FsspecPager(inner)
    except Exception as exc:  # unknown protocol, its package missing, bad options
        raise UserError(f"pager {url!r}: {type(exc).__name__}: {exc}", exit_code=2) from exc


def _python_pager(url: str, rest: str) -> Pager:
    """``python:MODULE:CLASS[:ARG]``: a pager class that is not installed as a package."""
    module_name, _, rest = rest.partition(":")
    class_name, _, arg = rest.partition(":")
    if not module_name or not class_name:
        raise UserError(f"pager {url!r}: write python:MODULE:CLASS[:ARG]", exit_code=2)
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        factory = getattr(importlib.import_module(module_name), class_name)
        return factory(arg) if arg else factory()
    except Exception as exc:
        raise UserError(f"pager {url!r}: {type(exc).__name__}: {exc}", exit_code=2) from exc
