"""``python3 -m audit.k8s PATH...`` (the same as ``airlock audit PATH...``)."""

import sys

from audit.k8s import main

sys.exit(main())
