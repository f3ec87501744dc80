"""Lifeline tools."""
