"""Compression methods, one module each, behind a registry keyed by method name."""
