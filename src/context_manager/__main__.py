"""``python -m context_manager``: the ``context-manager`` command (where its script is not on the PATH)."""

from context_manager.cli import main

if __name__ == "__main__":
    main(prog_name="python -m context_manager")
