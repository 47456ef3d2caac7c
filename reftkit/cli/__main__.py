"""``python -m reftkit.cli`` (what ``accelerate launch -m reftkit.cli`` runs)."""

import sys

from reftkit.cli.main import main

sys.exit(main())
