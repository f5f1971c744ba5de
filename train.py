"""Train MIRI: `python train.py --config configs/quickstart.yaml` (see README.md)."""

from miri_lightning.cli import main

if __name__ == "__main__":
    main()
