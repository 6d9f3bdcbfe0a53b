"""``python -m asvae_kit.compare SPEC [options]``, and ``--worker`` (one job from stdin) for the study's workers."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
