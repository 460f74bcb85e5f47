"""The demo model's home, apart from the product (nothing outside `minicpmv.demo` and the CLI
imports it): the generated world of shape scenes and documents with exact ground truth (scenes,
documents, build), the starting checkpoint and bundling (demo), the vision pre-training with
label heads that stands in for a pre-trained SigLIP (vision_pretrain), the demo benchmark sets
(benchmark_sets), held-out scoring (evaluate) and the recipe that builds the bundled model
(recipe; `python scripts/train_demo_model.py`)."""
