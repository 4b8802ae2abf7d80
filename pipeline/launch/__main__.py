"""`python -m pipeline.launch <dvc targets>`: see pipeline/launch/dag.py. The command's entry wires
the training stages in (pipeline.launch itself imports no training code)."""
import sys

from pipeline.train.stage import make_spec

from .dag import main

sys.exit(main(make_spec))
