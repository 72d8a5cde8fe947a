"""`python -m ssmprune_cli` runs the same CLI as the `ssmprune` console script."""

from ssmprune_cli.cli import main

if __name__ == "__main__":
    main()
