"""``python -m unlearnlm``, which ``accelerate launch -m unlearnlm unlearn ...`` runs in each
process: the ``unlearnlm`` command."""

import sys

from unlearnlm.cli import main

sys.exit(main())
