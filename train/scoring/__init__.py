"""Scoring inpainted images: the paper's metrics (preserved-region PSNR/MSE/SSIM/LPIPS, CLIP similarity, aesthetic
score, ImageReward, HPS v2.1) in our convention and the reference script's. Plain torch/transformers; no Lightning,
no ``data``: ``brushtrain evaluate`` and the ``eval.metrics`` callback both use it."""
