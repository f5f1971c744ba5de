"""Export what imputing needs from a checkpoint: `python scripts/export.py CKPT OUT.pt [--half]`."""

from miri_lightning.impute_cli import export_main

if __name__ == "__main__":
    export_main()
