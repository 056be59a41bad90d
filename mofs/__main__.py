"""``python -m mofs`` is the ``mofs`` command."""

from .cli import main

raise SystemExit(main())
