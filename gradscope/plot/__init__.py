"""Figures and terminal previews of records (no torch).

- :mod:`~gradscope.plot.spec`: what to draw; records resolved into a ``PlotSpec`` (no matplotlib)
- :mod:`~gradscope.plot.figure`: a ``PlotSpec`` drawn on an Agg figure; ``plot_records``
- :mod:`~gradscope.plot.training`: heatmaps of training records; ``plot_training``
- :mod:`~gradscope.plot.terminal`: a ``PlotSpec`` previewed in the terminal (no matplotlib)
- :mod:`~gradscope.plot.canvas`: the Agg figure, style and tick helpers both figures share
- :mod:`~gradscope.plot.write`: figure format, bytes and the one whole-file ``write_figure``
"""
