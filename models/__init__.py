"""Model definitions (torch) and small model files of our own."""
