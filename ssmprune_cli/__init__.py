"""ssmprune: token pruning with hidden-state alignment for vision state-space models."""

__version__ = "0.1.0"


def load(path, **kwargs):
    """Load any supported checkpoint (official .pth or ssmprune .safetensors) as a plain torch.nn.Module."""
    from ssmprune_cli.io.load import load_model

    return load_model(path, **kwargs)


__all__ = ["__version__", "load"]
