"""Random weights for torchvision's models, without kse_onnx (the export step of
tools/scripts/torchvision_verify_sweep.py runs where kse_onnx is not installed)."""

from __future__ import annotations


def randomise(model, seed: int = 0, heads: bool = False):
    """Random BatchNorm statistics and affine (torchvision's defaults make BatchNorm an
    identity), eval mode; with ``heads``, zero-initialised Linear weights made random too."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if heads and isinstance(m, nn.Linear) and not m.weight.any():
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.02)
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
    return model.eval()
