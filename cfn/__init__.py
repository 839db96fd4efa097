"""The CloudFormation templates, shipped in the fluidity package as ``fluidity._cfn``.

This file only makes the directory a package, so that ``importlib.resources`` finds the
templates in an editable install and in a wheel alike (see package-dir in pyproject.toml).
"""
