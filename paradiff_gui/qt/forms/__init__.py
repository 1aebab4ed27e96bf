"""The generation panel's forms: one small group box per concern, each owning its widgets and its
slice of :class:`~.mapping.FormValues`. ``mapping`` (no Qt) turns form values into a request and
back through ``engine.api.requests``, so the app and the CLI build requests the same way;
``widgets/panel.py`` only stacks the forms and routes the request in and out."""
