"""The label store: vectors, labels and provenance per dataset in Milvus (Lite or server), over gRPC."""
