"""The plain model: the BrushNet branch, its injection into the frozen UNet, the frozen parts (VAE, text
encoders, scheduler), generated bases for tests and benchmarks, the inpainting pipeline and the FLOP count.

No Lightning, no ``data``: what a user needs to run a trained branch."""
