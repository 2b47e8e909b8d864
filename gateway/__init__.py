"""The tagalong gateway: the public gRPC API, the Redis Streams job queues and the workers that drain them."""
