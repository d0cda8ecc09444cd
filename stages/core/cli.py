"""Entry-point wrapper: bad input ends a stage with one readable line, not a traceback."""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable

from stages.core.errors import InputError
from stages.core.logs import setup_logging


def run_stage(fn: Callable[[], object]) -> int:
    setup_logging()
    try:
        from stages.core.io import recover_staging

        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only the writing rank touches outputs
            recover_staging()  # finish or undo an interrupted publish before anything reads the outputs
        fn()
    except InputError as exc:
        logging.getLogger("stages").error("%s", exc)
        sys.stderr.write(f"error: {exc}\n")
        return 2
    return 0
