"""``python -m detox_utils.curate [--archives DIR] [--out DIR] [--check]`` (see `detox_utils.curate.files`)."""
import sys

from .files import main

sys.exit(main())
