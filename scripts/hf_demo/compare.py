"""Knee vs linear decay with a stock HuggingFace Trainer, offline (see knee_plugins/recipes/hf_demo.py)."""

from knee_plugins.recipes.hf_demo import main

if __name__ == "__main__":
    main()
