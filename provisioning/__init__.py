"""Lifeline provisioning."""
