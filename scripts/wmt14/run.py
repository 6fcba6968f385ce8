"""Prepare, train and evaluate the paper's WMT14 recipe; arguments as
`python -m knee_plugins.recipes.translation` (--task wmt14 is set). See README.md here."""

import sys

from knee_plugins.recipes.translation import main

if __name__ == "__main__":
    sys.exit(main(["--task", "wmt14", *sys.argv[1:]]))
