"""``python -m kdlab``: the command line (how torchrun starts each rank of ``kdlab run``)."""

from kdlab.cli import app

if __name__ == "__main__":
    app(prog_name="kdlab")
