"""Atelier: design, find and pair fashion products in the latent space of a VAE."""

__version__ = "0.1.0"
