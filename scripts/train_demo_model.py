"""Build the demo model from nothing: `python scripts/train_demo_model.py --help`. The recipe is
`minicpmv.demo.recipe` (its stages, and why each is there: research/demo-model-log.md)."""

from minicpmv.demo.recipe import main

if __name__ == "__main__":
    main()
