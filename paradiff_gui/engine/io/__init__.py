"""Files: PNG/TIFF metadata and recipes, export formats, the autosave folder — shared by the CLI
and the app. Imports only the core layer."""
