"""Lifeline sim_devices."""
