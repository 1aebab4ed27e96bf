"""Models: one protocol (``base``), one registry, and a folder or module per backend
(``terrain/``, ``sd/``), plus describing (``info``) and finding (``catalogue``) models without
loading them. Imports core and runtime; the registry imports the backends, never the reverse."""
