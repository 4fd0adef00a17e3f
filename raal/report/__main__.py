"""`python -m raal.report RUN_DIR [RUN_DIR ...] [--out DIR]`."""
import sys

from raal.report import main

sys.exit(main())
