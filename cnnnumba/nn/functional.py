"""`cnnnumba.nn.functional`: the same functions as `cnnnumba.functional`, under PyTorch's module path."""
from ..functional import *  # noqa: F401,F403
from ..functional import __all__  # noqa: F401
