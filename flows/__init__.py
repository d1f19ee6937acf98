"""Prefect flows: the order of steps and the gates."""
