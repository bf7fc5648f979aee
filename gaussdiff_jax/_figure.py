"""The figure class the plotting helpers return: a matplotlib `Figure` that Jupyter shows by itself.

Imported by `_plot` only when a plot is drawn (it imports matplotlib).
"""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


class PlotFigure(Figure):
    """A `matplotlib.figure.Figure` on its own Agg canvas, with a PNG representation for Jupyter.

    It never goes through `matplotlib.pyplot`: no global backend switch, no figure kept alive by
    pyplot's figure manager, nothing shown in scripts or headless runs. In Jupyter or IPython, a cell
    whose last value is such a figure displays it (IPython asks for `_repr_png_`); if the inline backend
    has registered its own printer for `Figure`, that printer wins and the figure still appears once.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        FigureCanvasAgg(self)

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=self.dpi, bbox_inches="tight")
        return buffer.getvalue()
