"""Torch-free mathematics: Gaussian expectations (``gaussian``), user expressions
(``expr``), the variance-scaling ratios of activations and operators (``ratios``, the
``gradscope ratios`` engine), the predicted per-layer growth of a configuration
(``predict``), and the statistics and fits of measurements (``stats``)."""
