"""`miri-bench`: the commands that judge results.

    miri-bench compare ...   # MIRI against the baselines on the same images and masks, with the targets
    miri-bench rescore ...   # a finished run's rounds scored again (e.g. a longer mask-information estimate)
    miri-bench solvers ...   # one round of a finished run solved again with other ODE solvers

`miri-bench COMMAND --help` says what each takes. The scripts under `scripts/` measure speed and memory.
"""

from __future__ import annotations

import importlib
import sys
from typing import Optional

COMMANDS = ("compare", "rescore", "solvers")


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    usage = f"usage: miri-bench {{{','.join(COMMANDS)}}} ...\n\n{__doc__}"
    if argv[:1] in (["-h"], ["--help"]):
        print(usage)
        return
    if not argv or argv[0] not in COMMANDS:
        sys.exit(usage)
    importlib.import_module(f"{__name__}.{argv[0]}").main(argv[1:])
