"""`python -m client` runs the `fitserve` command."""

from client.cli import main

raise SystemExit(main())
