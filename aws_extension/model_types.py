"""The model (checkpoint) types of API.md, which are also the WebUI's model folder names."""

MODEL_TYPES = ("Stable-diffusion", "Lora", "embeddings", "hypernetworks", "ControlNet", "VAE")
