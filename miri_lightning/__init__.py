"""miri-lightning: image imputation with MIRI (Mutual Information Reducing Iterations) on PyTorch Lightning."""

__version__ = "0.1.0"
