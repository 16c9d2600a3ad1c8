"""Deployment, bootstrap and local-stack tooling for the Prefect layer."""
