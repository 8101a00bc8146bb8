"""`python -m wenzhi`: the same command line as `wenzhi`."""
import sys

from wenzhi.cli import main

sys.exit(main())
