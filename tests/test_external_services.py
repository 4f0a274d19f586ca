"""With KAFKA_BOOTSTRAP_SERVERS and S3_ENDPOINT set, `loraplane up` starts no broker and no S3 of its own."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.support import Api, start_stack, stop_stack, wait_until


def test_up_uses_external_kafka_and_s3(tmp_path: Path) -> None:
    provider = start_stack(tmp_path / "provider")  # stands in for Apache Kafka and MinIO
    try:
        external = {
            k: provider.env[k] for k in ("KAFKA_BOOTSTRAP_SERVERS", "S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY")
        }
        consumer = start_stack(tmp_path / "consumer", extra_env=external)
        try:
            assert set(consumer.pids()) == {"supervisor", "api", "worker", "node"}
            assert consumer.env["KAFKA_BOOTSTRAP_SERVERS"] == external["KAFKA_BOOTSTRAP_SERVERS"]
            key = consumer.issue_key("admin", "external")
            name = f"ext-{uuid.uuid4().hex[:8]}"
            with Api(consumer, key) as api:
                # two workers now share the group; the first decision may wait for the rebalance
                assert api.post("/v2/workspaces", params={"wait": 60}, json={"name": name}).status_code == 201
            with Api(provider, key) as api:  # one log, so the provider's read model gets it too
                wait_until(lambda: api.get(f"/v2/workspaces/{name}").status_code == 200, message="the projection")
        finally:
            assert stop_stack(consumer) == []
    finally:
        assert stop_stack(provider) == []
