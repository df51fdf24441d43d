"""``python -m tasks.modelgen``: see the package docstring."""

from tasks.modelgen import main

main()
