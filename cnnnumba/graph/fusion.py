"""Fusion passes, run in order over the plain nodes that lowering made: batch norm folded into the conv before it
(inference), an activation (ReLU, ReLU6, Hardtanh) into the conv or batch norm before it, add + ReLU into one node,
and a residual block's batch norm + add (+ ReLU) into one. A pass absorbs a value only when no other op reads it,
and the fused value keeps the absorbing node's name with a suffix (`conv3_bn_relu6`)."""
import math

import numpy as np

from . import nodes as N
from .nodes.base import NO_CLAMP, RELU


def fold_batch_norm(lowering):
    """Inference: an eval-mode batch norm right after a plain conv joins that conv. Where the weight has no more
    elements than the conv's output it becomes the conv's scale and bias (folding passes over the weight at every
    call, the batch norm over the output); elsewhere (at batch 1 most of ResNet-18's weights are larger than their
    outputs) the conv kernel normalizes its output (conv2d_forward's normalize: as it sums, in FEW_PIXELS' shares)."""
    for batch_norm in [node for node in lowering.nodes if type(node) is N.BatchNormEval]:
        x = batch_norm.inputs[0]
        conv = x.producer
        if isinstance(conv, N.FoldedConv) and conv.bn is None and conv.clamp == NO_CLAMP and lowering.single_use(x):
            conv.bn = batch_norm.folding
            conv.bn_on_output = conv.conv_weight.size > np.prod(x.shape)
            _absorb(lowering, batch_norm, x, "_bn")


def fuse_conv_activation(lowering):
    """A ReLU after a conv is applied as the conv kernel stores each output tile, a ReLU6 or Hardtanh in one pass
    over the conv's output inside the conv node."""
    _fuse_activation_into(lowering, (N.Conv, N.FoldedConv))


def fuse_batch_norm_activation(lowering):
    """A ReLU, ReLU6 or Hardtanh after a batch norm is applied in the batch norm's normalizing pass."""
    _fuse_activation_into(lowering, (N.BatchNormTrain, N.BatchNormEval))


def fuse_add_relu(lowering):
    """relu(a + b) as one pass over memory (AddReLU), in the ReLU's place."""
    for relu in [node for node in lowering.nodes if type(node) is N.ReLU]:
        x = relu.inputs[0]
        add = x.producer
        if isinstance(add, N.Add) and lowering.single_use(x):
            lowering.nodes.remove(add)
            lowering.substitute(relu, N.AddReLU(list(add.inputs), x))
            lowering.replace(relu.output, x)
            x.name += "_relu"


def fuse_batch_norm_add(lowering):
    """Training: batch_norm(x) + shortcut (MobileNetV2's inverted residual) or relu(batch_norm(x) + shortcut)
    (ResNet's block end) as one node when only the add reads the batch norm's output."""
    for add in [node for node in lowering.nodes if type(node) in (N.Add, N.AddReLU)]:
        clamp = RELU if type(add) is N.AddReLU else NO_CLAMP
        a, b = add.inputs
        for normalized, shortcut in ((a, b), (b, a)):
            batch_norm = normalized.producer
            if type(batch_norm) is N.BatchNormTrain and batch_norm.clamp == NO_CLAMP and normalized is not shortcut \
                    and lowering.single_use(normalized):
                lowering.nodes.remove(batch_norm)
                lowering.substitute(add, N.BatchNormAdd(batch_norm, shortcut, add.output, clamp))
                break


# the order matters: a fold makes a conv+bn that a following activation can join; an add's ReLU must be fused
# before the batch norm feeding that add can join it
PASSES = (fold_batch_norm, fuse_conv_activation, fuse_batch_norm_activation, fuse_add_relu, fuse_batch_norm_add)


def fuse(lowering):
    """Run every fusion pass over `lowering`'s nodes, in order."""
    for fusion_pass in PASSES:
        fusion_pass(lowering)


def _fuse_activation_into(lowering, producer_types):
    for activation in [node for node in lowering.nodes if type(node) in (N.ReLU, N.Hardtanh)]:
        x = activation.inputs[0]
        producer = x.producer
        if type(producer) in producer_types and producer.clamp == NO_CLAMP and _fusable(activation.clamp) \
                and lowering.single_use(x):
            producer.clamp = activation.clamp
            _absorb(lowering, activation, x, "_" + N.activation_name(activation.clamp))


def _fusable(clamp):
    # a fused clamp reads an infinite bound as none, which a Hardtanh with one would not (it masks the gradient
    # at an infinite input); ReLU's infinite upper bound is none
    return clamp == RELU or all(math.isfinite(bound) for bound in clamp)


def _absorb(lowering, node, into, suffix):
    """Remove `node`, whose work its input's producer now does: readers of its output read `into` instead."""
    lowering.nodes.remove(node)
    lowering.replace(node.output, into)
    into.name += suffix
