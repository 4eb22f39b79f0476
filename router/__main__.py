"""``python -m router`` runs the command-line tool."""

from router.cli import main

if __name__ == "__main__":  # pragma: no cover - exercised by the CLI process tests
    main()
