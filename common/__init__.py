"""What both sides share, and nothing else: the error type the command line prints without a traceback, and
atomic file writes. ``data`` and ``train`` import it; it imports neither."""
