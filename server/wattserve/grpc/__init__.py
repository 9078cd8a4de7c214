"""The gRPC front end: decode requests, call the data plane, encode responses, map errors."""
