"""What operators see: the worker's web views (dashboard, JSON API, health, /metrics), over
every layer below (the app, its tables, its agents). Declared on the app by the entry
point (``streams_app``)."""
