"""The operator's dashboard: a live web page of a running service (``tickmpc dashboard``).

``board`` holds what the page shows, ``server`` serves it (aiohttp) from the service's
telemetry and control sockets, ``controls`` lists the settings the page can change, and
``static/`` is the page itself, with its plotting library (uPlot) shipped in the package so
the page works offline.
"""
