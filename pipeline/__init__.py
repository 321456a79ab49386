"""Data preparation stages."""
