"""io: the only place that opens, unpickles or writes model files (checkpoints, safetensors, config.json)."""

from .atomic import atomic_path, atomic_write_text
from .checkpoint import detect_family, read_pickle, unwrap
from .load import LoadedCheckpoint, load_checkpoint, load_model
from .safetensors_io import read_safetensors, save_model

__all__ = [
    "LoadedCheckpoint",
    "atomic_path",
    "atomic_write_text",
    "detect_family",
    "load_checkpoint",
    "load_model",
    "read_pickle",
    "read_safetensors",
    "save_model",
    "unwrap",
]
