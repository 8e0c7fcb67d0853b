"""subnets: find, train, route and pool the sub-networks that live inside neural networks.

A sub-network is a selection of a network's units (a mask, a route or a prefix) and a result is a
pooling of the selected units' outputs. See the README and ``docs/`` for the families of methods.
"""

__version__ = "0.1.0"
