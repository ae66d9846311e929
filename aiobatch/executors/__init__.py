"""Executors run one attempt of an instance: ``local`` processes (and, later, containers)."""
