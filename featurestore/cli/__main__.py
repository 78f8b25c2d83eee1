"""``python -m featurestore.cli``."""

import sys

from featurestore.cli import main

sys.exit(main())
