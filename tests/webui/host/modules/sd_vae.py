"""Stand-in for modules.sd_vae: the VAE files by name."""

vae_dict = {}
