"""Shared pieces of the tests that run Python in subprocesses."""
