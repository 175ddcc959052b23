"""ONNX: `export(model, example_input, path)` writes a traced model as an ONNX graph; `load(path)` builds a
trainable cnnnumba model from an ONNX file of the supported ops. Both need the optional `onnx` package."""
from .exporter import export
from .importer import SUPPORTED_OPS, load

__all__ = ["SUPPORTED_OPS", "export", "load"]
