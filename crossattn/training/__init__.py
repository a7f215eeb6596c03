"""Twin training: one config, one LR table, one batch order and one set of augmentation draws for both frameworks.

The framework-neutral pieces live here; the loops themselves are
torch_impl/train.py and paddle_impl/train.py, mirrored line for line.
"""

from crossattn.training.config import TrainConfig, load_train_config, resolve_train_config

__all__ = ["TrainConfig", "load_train_config", "resolve_train_config"]
