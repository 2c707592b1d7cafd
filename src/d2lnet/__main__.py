"""``python -m d2lnet ...`` (also under ``torchrun -m d2lnet``) is the ``d2lnet`` command."""

import sys

from d2lnet.cli import main

sys.exit(main())
