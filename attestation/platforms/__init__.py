"""Platforms: one package per kind of evidence."""
