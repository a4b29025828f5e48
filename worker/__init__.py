"""Celery adapters over `core`: tasks parse ids, call the domain, and map its errors."""
