"""featurestore: online feature serving over HTTP and gRPC."""

__version__ = "0.1.0"
