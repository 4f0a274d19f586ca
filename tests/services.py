"""Where the tests find Kafka and S3 (a helper for fixtures, not a test module).

1. KAFKA_BOOTSTRAP_SERVERS and S3_ENDPOINT in the environment: those.
2. Else, when a Docker engine answers: Apache Kafka (KRaft) and MinIO in testcontainers.
3. Else None: the tests start the embedded binaries (Tansu, SeaweedFS) through LocalStack.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

KAFKA_IMAGE = "apache/kafka:3.9.0"


def docker_available() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _apache_kafka_container() -> Any:
    """testcontainers' KafkaContainer starts Confluent images only (its start script and its KRaft
    version check are Confluent's); this runs the official apache/kafka image in KRaft mode."""
    from testcontainers.community.kafka import KafkaContainer

    class ApacheKafkaContainer(KafkaContainer):
        def configure(self) -> None:
            self._configure_kraft()  # KRaft env (roles, controller listener, quorum voters)
            self.boot_command = ""
            self.with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
            self.with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")

        def tc_start(self) -> None:
            host = self.get_container_host_ip()
            port = self.get_exposed_port(self.port)
            script = (
                "#!/bin/bash\n"
                f"export KAFKA_ADVERTISED_LISTENERS={self.listener_name}://{host}:{port},"
                "BROKER://$(hostname -i | cut -d' ' -f1):9092\n"
                "exec /etc/kafka/docker/run\n"
            )
            self.create_file(script.encode(), KafkaContainer.TC_START_SCRIPT)

    return ApacheKafkaContainer(KAFKA_IMAGE)


@contextmanager
def external_services() -> Iterator[dict[str, str] | None]:
    """The environment (KAFKA_BOOTSTRAP_SERVERS, S3_*) of services to test against, or None."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("S3_ENDPOINT"):
        env = {"KAFKA_BOOTSTRAP_SERVERS": os.environ["KAFKA_BOOTSTRAP_SERVERS"]}
        for name in ("S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_REGION", "S3_SECURE"):
            if name in os.environ:
                env[name] = os.environ[name]
        yield env
        return
    if not docker_available():
        yield None
        return
    from testcontainers.community.minio import MinioContainer

    with _apache_kafka_container() as kafka, MinioContainer() as minio:
        config = minio.get_config()
        yield {
            "KAFKA_BOOTSTRAP_SERVERS": kafka.get_bootstrap_server(),
            "S3_ENDPOINT": f"http://{config['endpoint']}",
            "S3_ACCESS_KEY": config["access_key"],
            "S3_SECRET_KEY": config["secret_key"],
        }
