"""Prepare, train (phase 1, proximal init, phase 2) and evaluate the paper's MAT recipe; arguments
as `python -m knee_plugins.recipes.mat`. See README.md here."""

import sys

from knee_plugins.recipes.mat import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
