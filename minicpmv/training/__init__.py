"""Training toolkit: the paper's stages, SFT and LoRA on the official fine-tuning format (docs/training.md)."""
