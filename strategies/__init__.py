"""Adapters that put ddplug's condensed sets to work in other frameworks.

``strategies.avalanche`` (needs avalanche-lib) is a condensed rehearsal memory for continual
learning; ``strategies.flower`` (needs flwr) shares distilled sets in federated learning.
Importing this package imports neither framework.
"""
