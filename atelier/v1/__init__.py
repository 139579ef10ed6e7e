"""Generated protobuf and gRPC stubs for atelier.v1 (do not edit)."""
