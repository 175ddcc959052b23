"""Placeholder until the norm ops land."""


def batch_norm(*args, **kwargs):
    raise NotImplementedError("batch_norm")
