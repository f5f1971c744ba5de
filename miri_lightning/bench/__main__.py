"""`python -m miri_lightning.bench COMMAND ...`, the same as `miri-bench COMMAND ...`."""

from . import main

main()
