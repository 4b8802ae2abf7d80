"""Paper beside ours: the comparison tables (compare.py, render.py) and the paper's figures
(figures.py) that the `report` DVC stage writes to reports/."""
