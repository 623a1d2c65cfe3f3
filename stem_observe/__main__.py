"""``python -m stem_observe`` runs the command line."""

import sys

from stem_observe.cli import main

sys.exit(main())
