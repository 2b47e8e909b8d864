"""tagalong: gRPC microservices for semi-supervised image labelling with vector embeddings.

`tagalong.v1` holds the code generated from protos/ (made by `make protos`, never committed);
`tagalong.runtime` is the shared service runtime; `tagalong.sdk` the client; `tagalong.cli` the command.
"""

__version__ = "0.1.0"
