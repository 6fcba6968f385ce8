"""Knee against linear, cosine, WSD (1-sqrt) and schedule-free AdamW with a stock HuggingFace Trainer, offline.

See knee_plugins/recipes/hf_demo.py for the protocol and scripts/hf_demo/README.md for the commands.
"""

from knee_plugins.recipes.hf_demo import main

if __name__ == "__main__":
    main()
