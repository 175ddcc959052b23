"""Files people keep: pickle-free checkpoints, safetensors weights (`save`/`load` pick the format), state-dict
compatibility checks."""
from .checkpoint import FORMAT_VERSION, CheckpointError
from .state_dict import IncompatibleKeys, StateDictError, check_state_dict, compare_state_dict
from .weights import load, load_safetensors, save, save_safetensors

__all__ = ["FORMAT_VERSION", "CheckpointError", "IncompatibleKeys", "StateDictError", "check_state_dict",
           "compare_state_dict", "load", "load_safetensors", "save", "save_safetensors"]
