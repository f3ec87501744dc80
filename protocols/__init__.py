"""Lifeline protocols."""
