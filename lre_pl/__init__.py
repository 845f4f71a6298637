"""Linear Relational Embeddings (Hernandez et al., ICLR 2024) as a PyTorch Lightning experiment module."""

__version__ = "0.1.0"
