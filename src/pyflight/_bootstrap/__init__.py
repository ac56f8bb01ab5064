"""Holds the ``sitecustomize`` that ``pyflight run`` puts on its children's PYTHONPATH.

This directory (not the package) goes on ``PYTHONPATH``; it is a package only so that
installers ship the file.
"""
