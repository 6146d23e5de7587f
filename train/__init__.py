"""BrushTrain's model side: the BrushNet branch, its injection into a frozen UNet,
the inpainting pipeline and the ``brushtrain`` command line."""

__version__ = "0.1.0"
