"""Benchmarks of thinkpix (issue 10): dispatch paths of the expert bank and RSR overhead in real hosts.

Run them as scripts (``python benchmarks/dispatch.py --quick``); the package form lets the tests import
the benchmarked peer implementations.
"""
