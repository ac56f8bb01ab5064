"""``pyflight view``: the report of a trace served on a local web server.

``command`` is the subcommand (loads, analyses, serves); ``server`` the HTTP server.
"""
