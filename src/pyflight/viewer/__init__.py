"""``pyflight view``: the interactive timeline of a trace, served on a local web server.

``command`` is the subcommand (loads, analyses, serves); ``server`` the HTTP server;
``api`` the timeline's JSON drawn from the analysis model; ``lod`` its levels of detail;
``static/`` the page, its script and style (shipped in the package: nothing is fetched
from elsewhere). docs/viewer.md describes what the page shows.
"""
