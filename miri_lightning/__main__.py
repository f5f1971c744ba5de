"""`python -m miri_lightning ARGS` trains as `python train.py ARGS` does: the entry point that needs no checkout."""

from .cli import main

if __name__ == "__main__":
    main()
