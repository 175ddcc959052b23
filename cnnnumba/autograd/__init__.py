"""Autograd: `Tensor`, the op base class `Function`, the backward walk, `no_grad` and `gradcheck`."""
from .anomaly import AnomalyError, detect_anomaly, is_anomaly_enabled, set_detect_anomaly
from .function import Function, register_post_backward_hook
from .gradcheck import GradcheckError, gradcheck
from .grad_mode import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from .tensor import Tensor

__all__ = ["AnomalyError", "detect_anomaly", "is_anomaly_enabled", "set_detect_anomaly", "Function", "GradcheckError", "Tensor", "enable_grad", "gradcheck", "is_grad_enabled", "no_grad",
           "register_post_backward_hook", "set_grad_enabled"]
