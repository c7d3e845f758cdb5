# Lets `python -m edgevit` and `torchrun -m edgevit train ...` reach the CLI.
from edgevit.cli import main

if __name__ == "__main__":
    main()
