import sys

from mtd_core.cli import main

sys.exit(main())
