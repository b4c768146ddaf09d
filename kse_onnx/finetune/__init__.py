"""Fine-tuning support (torch): data readers and, later, the ONNX -> torch importer."""
