"""The optional `onnx` package, imported on first use with an error that says how to install it."""


def require_onnx():
    try:
        import onnx
        import onnx.checker
        import onnx.helper
        import onnx.numpy_helper
    except ImportError:
        raise ImportError("ONNX export and import need the onnx package: pip install 'cnnnumba[onnx]' "
                          "(or pip install onnx onnxruntime)") from None
    return onnx
