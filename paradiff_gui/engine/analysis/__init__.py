"""Reading finished pictures: seam metrics and shaded relief. Imports only the core layer."""
