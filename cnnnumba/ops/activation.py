"""Placeholder until the activation ops land."""


def relu(*args, **kwargs):
    raise NotImplementedError("relu")


def leaky_relu(*args, **kwargs):
    raise NotImplementedError("leaky_relu")


def gelu(*args, **kwargs):
    raise NotImplementedError("gelu")


def sigmoid(*args, **kwargs):
    raise NotImplementedError("sigmoid")


def tanh(*args, **kwargs):
    raise NotImplementedError("tanh")
