"""Build script: the Cython extensions in src/ (see the Cython backend)."""

from setuptools import setup

setup()
