"""`python -m transports` is the `lmtp` command."""

import sys

from .cli import main

sys.exit(main())
