"""``python -m arcvq_plugin.priors`` = ``arcvq-prior``."""
import sys

from arcvq_plugin.priors.cli import main

sys.exit(main())
