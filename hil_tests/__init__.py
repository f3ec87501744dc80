"""Lifeline hil_tests."""
