"""FLOP counts of convolution and linear layers, per pass, and of whole models traced through one forward pass.

What is counted, as is usual: a multiply-add is 2 FLOPs. A convolution costs 2·N·Ho·Wo·Cout·(Cin/groups)·kH·kW
forward, the same again for the input gradient (not counted where the input needs no gradient, as for the
first layer) and the same again for the weight gradient. A linear layer costs 2·N·in·out per pass. Pooling,
batch norm, activations, the loss and the optimizer update are not counted.
"""
from dataclasses import asdict, dataclass
from math import prod

COUNTED = ("multiply-adds count 2 FLOPs; conv2d: 2*N*Ho*Wo*Cout*(Cin/groups)*kH*kW forward, the same for "
           "backward-input (skipped where the input needs no gradient, e.g. the first layer) and for "
           "backward-weight; linear: 2*N*in*out per pass; pooling, batch norm, activations, loss and optimizer "
           "are not counted")


def conv2d_flops(output_shape, weight_shape):
    """FLOPs of one conv2d pass: output (N, Cout, Ho, Wo), weight (Cout, Cin/groups, kH, kW)."""
    batch, channels_out, out_h, out_w = output_shape
    return 2 * batch * out_h * out_w * channels_out * prod(weight_shape[1:])


def linear_flops(input_shape, weight_shape):
    """FLOPs of one linear pass: input (*, in), weight (out, in)."""
    rows = prod(input_shape[:-1])
    return 2 * rows * weight_shape[0] * weight_shape[1]


@dataclass
class LayerFlops:
    """The counted FLOPs of one conv2d or linear call, by pass."""

    layer: str
    kind: str
    input_shape: tuple
    output_shape: tuple
    forward: int
    backward_input: int
    backward_weight: int

    @property
    def backward(self):
        return self.backward_input + self.backward_weight

    def as_dict(self):
        record = asdict(self)
        record["input_shape"], record["output_shape"] = list(self.input_shape), list(self.output_shape)
        return record


def op_flops(op_name, input_shapes, output_shape, needs_input_grad, layer=""):
    """LayerFlops for a Conv2d or Linear op call (by the op class's name), None for ops that are not counted.

    `needs_input_grad` is the op's flags for (input, weight, ...): a pass whose gradient nobody needs costs nothing.
    """
    if op_name == "Conv2d":
        per_pass = conv2d_flops(output_shape, input_shapes[1])
    elif op_name == "Linear":
        per_pass = linear_flops(input_shapes[0], input_shapes[1])
    else:
        return None
    needs_input, needs_weight = (tuple(needs_input_grad) + (False, False))[:2]
    return LayerFlops(layer, op_name.lower(), tuple(input_shapes[0]), tuple(output_shape), per_pass,
                      per_pass if needs_input else 0, per_pass if needs_weight else 0)


@dataclass
class ModelFlops:
    """Counted FLOPs of a model for one batch: per layer, an inference pass and a training step."""

    batch_size: int
    layers: list

    @property
    def forward(self):
        return sum(layer.forward for layer in self.layers)

    @property
    def backward(self):
        return sum(layer.backward for layer in self.layers)

    @property
    def training_step(self):
        return self.forward + self.backward

    def per_step(self, mode):
        """FLOPs of one step in mode "train" (forward + backward) or "inference" (forward only)."""
        return self.training_step if mode == "train" else self.forward

    def as_dict(self):
        return {"batch_size": self.batch_size, "forward": self.forward, "backward": self.backward,
                "training_step": self.training_step, "layers": [layer.as_dict() for layer in self.layers]}


def model_flops(model, input_shape):
    """Trace one forward pass of `model` on zeros of `input_shape` (N, C, H, W) and count its layers' FLOPs.

    Parameters take part as in training (their gradients are wanted), the input does not. The model runs in
    eval mode for the trace, so its running statistics are left alone; FLOPs do not depend on the mode.
    """
    import numpy as np

    from ..autograd import Tensor
    from .instrument import record_ops

    dtype = next(iter(model.parameters())).dtype
    was_training = model.training
    model.eval()
    try:
        with record_ops(model) as calls:
            model(Tensor(np.zeros(input_shape, dtype=dtype)))
    finally:
        model.train(was_training)
    layers = [op_flops(call.op, call.input_shapes, call.output_shape, call.needs_input_grad, call.module)
              for call in calls]
    return ModelFlops(input_shape[0], [layer for layer in layers if layer is not None])
