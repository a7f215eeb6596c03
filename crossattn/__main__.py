"""`python -m crossattn` runs the same click group as the `crossattn` script."""

from cli import console

if __name__ == "__main__":
    console()
