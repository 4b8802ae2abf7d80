"""`python -m pipeline.launch <dvc targets>`: see pipeline/launch/dag.py."""
import sys

from .dag import main

sys.exit(main())
