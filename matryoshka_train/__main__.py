"""`python -m matryoshka_train` is `mtrain` (and what `accelerate launch -m` starts)."""

import sys

from .cli import main

sys.exit(main())
