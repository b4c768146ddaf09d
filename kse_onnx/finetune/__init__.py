"""Fine-tuning by distillation (torch): the ONNX graph imported as a torch module whose
parameters are its weights (``importer``), the losses, the epoch loop, QAT, checkpoints."""
