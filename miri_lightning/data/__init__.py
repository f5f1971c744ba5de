"""Image sources, mask mechanisms and the datamodule that owns the incomplete collection."""
