"""Converters from public recordings into Santi's site config, observation and truth records."""
