"""Generated gRPC/protobuf code for featurestore.v1 (``make proto``; do not edit)."""
