"""The control-plane Lambda sources, shipped in the fluidity package as ``fluidity._lambda_src``.

This file only makes the directory a package, so that `fluidity deploy` and the local cloud
import ``build_zip`` and find ``fluidity_lambda/`` in an editable install and in a wheel alike
(see package-dir in pyproject.toml). It is not part of the Lambda zip.
"""
