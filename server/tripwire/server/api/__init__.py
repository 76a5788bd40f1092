"""The gRPC edge: servicers, conversion and error mapping. Protobuf stays here."""
