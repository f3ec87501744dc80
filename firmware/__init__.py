"""Lifeline firmware."""
