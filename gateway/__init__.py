"""Lifeline gateway."""
