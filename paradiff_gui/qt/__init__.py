"""Everything Qt: the desktop app. The engine never imports this package."""
