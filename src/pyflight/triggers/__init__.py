"""Ways to get a snapshot out of a running process: HTTP endpoint, signals, triggers."""
