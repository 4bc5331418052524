"""``python -m tools.cli``: the same as the ``guest-reset`` script."""

import sys

from tools.cli.main import main

sys.exit(main())
