"""Local launchers (torchrun, ``fabric run``) and launcher detection."""
