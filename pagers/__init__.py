"""Pagers: the managers of mofs's memory objects, and how to pick one by URL.

A pager URL is ``scheme:rest``. The built-in schemes are ``sqlite:`` (pages in the
mofs store, or in the database named by ``rest``) and ``memory:`` (anonymous memory,
precious pages swapped to a temporary SQLite file, or to ``rest`` to keep them);
an installed package adds a scheme through the ``mofs.pagers`` entry-point group, whose
entry point names a class called with ``rest`` as its single argument. A pager that is
not packaged can be named directly: ``python:MODULE:CLASS`` or ``python:MODULE:CLASS:ARG``
imports MODULE (from the current directory too) and calls CLASS, with ARG if given.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys

from mofs.errors import UserError

from .example import DictPager as DictPager
from .kit import Pager as Pager
from .memory import MemoryPager as MemoryPager
from .sqlite import SQLitePager as SQLitePager

__all__ = ["DictPager", "MemoryPager", "Pager", "SQLitePager", "open_pager"]

_BUILTIN = ("memory", "python", "sqlite")


def open_pager(url: str | None, store_path: str) -> Pager:
    """The pager named by ``url``; ``None`` means the store's own SQLite pager.

    Raises :class:`~mofs.errors.UserError` (exit code 2) for an unknown scheme.
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
    plugins = {ep.name: ep for ep in importlib.metadata.entry_points(group="mofs.pagers")}
    if scheme in plugins:
        try:
            factory = plugins[scheme].load()
        except Exception as exc:
            raise UserError(f"pager {url!r}: cannot load {plugins[scheme].value}: {exc}",
                            exit_code=2) from exc
        return factory(rest)
    known = ", ".join(f"{name}:" for name in sorted(set(_BUILTIN) | set(plugins)))
    raise UserError(f"unknown pager {url!r}: known schemes are {known}", exit_code=2)


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
