"""The offline demo: Knee vs linear, cosine, inverse-sqrt and one-cycle (and Knee at 65% of the
budget) on the embedded De→En gettext corpus; arguments as
`python -m knee_plugins.recipes.translation` (--task demo is set)."""

import sys

from knee_plugins.recipes.translation import main

if __name__ == "__main__":
    sys.exit(main(["--task", "demo", *sys.argv[1:]]))
