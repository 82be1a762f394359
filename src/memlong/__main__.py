import sys

from memlong.cli import main

if __name__ == "__main__":
    sys.exit(main())
