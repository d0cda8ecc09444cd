"""Replay a method's published protocol on its home data: ``python -m stages.replay METHOD ...``.

Each method's protocol lives in ``stages/replays/<method>.py`` with a ``main(argv)``; this
entry point only dispatches, so ``--help`` of each method documents its own flags.
"""
from __future__ import annotations

import importlib
import sys

from stages.core.logs import setup_logging

METHODS = ("kad_disformer", "interfusion", "metalog", "xlstm_logad")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in METHODS:
        sys.stderr.write(f"usage: python -m stages.replay {{{','.join(METHODS)}}} [method flags] (--help per method)\n")
        return 2
    setup_logging()
    module = importlib.import_module(f"stages.replays.{argv[0]}")
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
