"""Recipe models of the built-in experiment kinds, one module per family, plus the sections they share.

These modules import pydantic, the standard library and :mod:`subnets.catalogue` only, never torch or a
family: validating a recipe (``subnets run``, ``--set``) answers at once, and a wrong field is one line before
anything heavy loads. The families import their recipe models from here.
"""
