"""`python -m ditkit ...` (and `torchrun -m ditkit ...`) runs the CLI."""

from ditkit.cli.main import main

if __name__ == "__main__":
    main()
