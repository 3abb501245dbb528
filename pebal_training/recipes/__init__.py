"""Ready-made fine-tuning runs (see cityscapes_smoke)."""
