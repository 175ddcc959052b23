"""Files people keep: pickle-free checkpoints (`save`/`load`) and state-dict compatibility checks."""
from .checkpoint import FORMAT_VERSION, CheckpointError, load, save
from .state_dict import IncompatibleKeys, StateDictError, check_state_dict, compare_state_dict

__all__ = ["FORMAT_VERSION", "CheckpointError", "IncompatibleKeys", "StateDictError", "check_state_dict",
           "compare_state_dict", "load", "save"]
