"""``python -m paradiff_gui.cli``, as ``python -m paradiff_gui``: the ``paradiff`` command."""

from paradiff_gui.cli import main

raise SystemExit(main())
