"""Operator types kse-onnx recognises, named once."""

QUANTIZED_CONVS = ("QLinearConv", "ConvInteger")  # integer kernels of onnxruntime
CONVS = ("Conv", *QUANTIZED_CONVS)  # every convolution node (float or integer)
