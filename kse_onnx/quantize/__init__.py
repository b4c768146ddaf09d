"""INT8 after KSE: onnxruntime's own quantizer, then the KSE sharing kept in 8 bits.

- :mod:`.ptq`: ``quantize_static`` (QDQ, calibrated) or ``quantize_dynamic`` from
  ``onnxruntime.quantization``, on the model with its compact weights expanded;
- :mod:`.shared`: each quantized weight whose int8 kernels repeat is stored as an int8
  codebook plus integer codes (``Gather``), which onnxruntime folds back at load;
- :mod:`.inspect`: which Convs onnxruntime actually runs as integer kernels, and why the
  others stay float.
"""
