"""trainlab: config-driven PyTorch experiments (see README.md and docs/design.md)."""
