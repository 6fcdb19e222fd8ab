"""BatchNorm statistics from checkpoints of every format, read safely and lazily.

The paper's Appendix A reads a trained plain network's BatchNorm layers: σ = sqrt(mean of
``running_var``) per layer, against the layer index, grows from deep to shallow layers and
drops right after each max-pool. :func:`inspect_checkpoint` does that for any checkpoint.

- :mod:`~gradscope.checkpoint.open`: sniff the format and read it without running code from
  the file (restricted unpickler, zip records, legacy torch.save, safetensors, TorchScript).
- :mod:`~gradscope.checkpoint.remote`: model names (:mod:`~gradscope.checkpoint.weights`) and
  URLs, downloaded once into the torch hub cache; ``hf://`` sources
  (:mod:`~gradscope.checkpoint.hf`).
- :mod:`~gradscope.checkpoint.table`: the tensors of one checkpoint (read on demand) and norms.
- :mod:`~gradscope.checkpoint.batchnorm`: BatchNorm layers and their rows.
- :mod:`~gradscope.checkpoint.structure`: downsamples, segments, blocks and positions, from the
  names of known layouts (VGG, torchvision/timm ResNet, DenseNet, MobileNetV2), a module graph,
  channel changes or ``--downsample-after``; the layer(s) that see the raw input.
- :mod:`~gradscope.checkpoint.verdict`: the growth fits within segments, their intervals and
  the verdict.
- :mod:`~gradscope.checkpoint.inspect`: :func:`inspect_checkpoint`, the public entry.
"""

from gradscope.checkpoint.batchnorm import batchnorm_records, weight_records
from gradscope.checkpoint.inspect import CheckpointResult, inspect_checkpoint
from gradscope.checkpoint.open import open_checkpoint
from gradscope.checkpoint.remote import resolve_model_name
from gradscope.checkpoint.table import TensorEntry, TensorTable, entry_norm, frobenius_norm
from gradscope.checkpoint.verdict import fit_checkpoint, fit_within_groups, summarize

__all__ = [
    "CheckpointResult",
    "TensorEntry",
    "TensorTable",
    "batchnorm_records",
    "entry_norm",
    "fit_checkpoint",
    "fit_within_groups",
    "frobenius_norm",
    "inspect_checkpoint",
    "open_checkpoint",
    "resolve_model_name",
    "summarize",
    "weight_records",
]
