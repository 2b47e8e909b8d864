"""Local orchestration (`make up` / `make down`): Redis, a real Milvus server and the services as processes."""
