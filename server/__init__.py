"""AI Battle gRPC server."""
