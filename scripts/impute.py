"""Impute new images with a trained run: `python scripts/impute.py CKPT --images DIR --out DIR` (see --help)."""

from miri_lightning.impute_cli import main

if __name__ == "__main__":
    main()
