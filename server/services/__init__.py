"""gRPC servicers: thin handlers that validate, call one component, and map the result."""
