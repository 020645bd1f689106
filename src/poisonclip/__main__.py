"""``python -m poisonclip ...``: the same command line as ``poisonclip ...`` (for an environment
whose scripts folder is not on PATH, or to pick the interpreter explicitly)."""

from poisonclip.cli import main

if __name__ == "__main__":
    main()
