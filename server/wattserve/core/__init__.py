"""The protocol-free core: validation, model lookup, the data plane. Never imports protobuf."""
