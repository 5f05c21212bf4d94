"""``python -m detox_utils.report build|retitle ...`` (see `detox_utils.report.build`)."""
import sys

from .build import main

sys.exit(main())
