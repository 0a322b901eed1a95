"""titans: stream genomes and long documents through a Titans model with test-time memory."""

__version__ = "0.1.0"
