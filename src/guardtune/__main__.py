"""``python -m guardtune``: what ``accelerate launch -m guardtune`` and ``torchrun -m guardtune`` run."""

from guardtune.cli import main

# Guarded so that importing the module (multiprocessing's spawn, Ray workers) never runs the CLI.
if __name__ == "__main__":
    main()
