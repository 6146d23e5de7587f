"""The training engine: the Lightning module (one training step), losses, optimizer and schedule, EMA,
``torch.compile``, the DDP/DeepSpeed strategy, checkpoints (writing, integrity, export) and the
preemption/signal handling. Builds on ``train.model`` and ``data``; knows nothing of the callbacks or commands."""
