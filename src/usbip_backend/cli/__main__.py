import sys

from .run import console

sys.exit(console())
