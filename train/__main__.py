import sys

from train.cli import main

if __name__ == "__main__":  # loader workers (forkserver) may import this module: never run the CLI there
    sys.exit(main())
