from paradiff_gui.cli import main

raise SystemExit(main())
