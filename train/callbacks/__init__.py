"""Lightning callbacks that watch a run: throughput/MFU metrics, progress lines, sample grids, held-out
evaluation, loggers, the export at the end. Each gets what it needs through its constructor."""
