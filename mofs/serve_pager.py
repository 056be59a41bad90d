"""``mofs serve-pager URL --listen ADDR``: serve a pager to mofs daemons over a socket.

The daemon mounts with ``--pager unix:PATH`` (or ``tcp:HOST:PORT``); the pager then
lives in this process, which may die and be restarted without taking the mount down
(``docs/durability.md``). The protocol on the socket is ``mofs/wire.py``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import trio

from .errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The ``serve-pager`` subcommand's arguments."""
    p = sub.add_parser(
        "serve-pager", help="serve a pager to mofs daemons over a Unix or TCP socket",
        description="Open the pager named by URL (any --pager URL, e.g. sqlite:PATH) and "
        "serve it on ADDR until SIGTERM or Ctrl-C. Mount with --pager unix:PATH or "
        "--pager tcp:HOST:PORT to use it. One daemon at a time; each connection gets a "
        "freshly opened pager. A Unix socket is created 0600.")
    p.add_argument("url", metavar="URL", help="the pager to serve, as for mount --pager")
    p.add_argument("--listen", metavar="ADDR", required=True,
                   help="unix:PATH or tcp:HOST:PORT (port 0: any free port)")
    p.add_argument("--store", metavar="STORE",
                   help="the mofs store a bare sqlite: pager keeps its pages in")
    p.add_argument("--debug", action="store_true", help="log debug messages")


def main(args: argparse.Namespace) -> int:
    """Serve until a signal; one line on stdout once listening."""
    from pagers import open_pager
    from pagers.remote import Listening, RemotePager, serve_pager

    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    url = args.url
    if url.partition(":")[0] == "sqlite" and not url.partition(":")[2] and not args.store:
        raise UserError("serve-pager sqlite: needs a database: write sqlite:PATH or give "
                        "--store STORE", exit_code=2)
    store = os.path.abspath(args.store) if args.store else ""
    probe = open_pager(url, store)  # a bad URL is an error now, not at the first daemon
    if isinstance(probe, RemotePager):
        probe.disconnect()
    listening = Listening(args.listen)

    async def run() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve_pager, url, listening, lambda u: open_pager(u, store))
                print(f"mofs: serving {url} on {listening.address} (pid {os.getpid()})",
                      flush=True)
                async for signum in signals:
                    logging.getLogger("mofs").info("received %s: stopping",
                                                   signal.Signals(signum).name)
                    break
                nursery.cancel_scope.cancel()

    try:
        trio.run(run)
    finally:
        listening.close()
    return 0
