"""``brushtrain fit`` as a script file, for launchers that take a script path.

  fabric run --accelerator cpu --devices 2 launch/fit.py -c configs/tiny_cpu.yaml
  torchrun --nproc_per_node 8 launch/fit.py -c configs/sd15_segmentation.yaml
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from train.engine.signals import (
        install,  # first: a signal during start-up is remembered, not fatal
    )

    install()
    from train.cli import main

    sys.exit(main(["fit", *sys.argv[1:]]))
