"""Stable Diffusion on cloud GPUs: WebUI extension, middleware API and worker (see DESIGN.md)."""

__version__ = "0.1.0"
