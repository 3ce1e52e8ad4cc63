"""``python -m pali_cli`` runs the same CLI as the ``pali`` command."""

from pali_cli.app import main

if __name__ == "__main__":
    main()
