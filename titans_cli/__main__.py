"""`python -m titans_cli` is the `titans` command (also under torchrun: `torchrun ... -m titans_cli`)."""

from titans_cli.cli.app import main

if __name__ == "__main__":
    main()
