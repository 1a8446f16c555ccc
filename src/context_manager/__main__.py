"""``python -m context_manager``: the ``context-manager`` command line."""

from context_manager.cli import main

if __name__ == "__main__":
    main()
