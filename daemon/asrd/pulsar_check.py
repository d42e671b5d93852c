"""What asrd can tell about its broker before it depends on it, each problem in one line: the
TLS handshake as the client makes it, the topic, and the subscription on the topic and on the
retry-letter topic (TDMQ creates no subscription on its own, and a missing one only shows as a
consumer that never starts).
"""

from __future__ import annotations

import pulsar

from .config import PulsarSettings


def _short(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).removeprefix('Pulsar error: ')}"


def subscription_problem(client: pulsar.Client, topic: str, subscription: str) -> str:
    """Why ``subscription`` cannot be opened on ``topic``, or ``""``. Opening it is the only way
    the binary protocol has to ask; the consumer is closed at once (with one message of
    prefetch, which the broker gives to another consumer)."""
    try:
        consumer = client.subscribe(
            topic,
            subscription,
            consumer_type=pulsar.ConsumerType.Shared,
            initial_position=pulsar.InitialPosition.Earliest,
            receiver_queue_size=1,
        )
    except (pulsar.SubscriptionNotFound, pulsar.Timeout) as exc:
        # A partitioned topic's missing subscription is retried by the client until it times out.
        return (
            f"subscription {subscription!r} on {topic} could not be opened ({_short(exc)}): "
            "create it (TDMQ makes none automatically) or check the role's consume permission"
        )
    except pulsar.TopicNotFound:
        return f"topic {topic} does not exist: create it (TDMQ: in the console or its API)"
    except pulsar.PulsarException as exc:
        return f"cannot subscribe {subscription!r} on {topic}: {_short(exc)}"
    consumer.close()
    return ""


def subscription_problems(settings: PulsarSettings, client: pulsar.Client) -> list[str]:
    """The consumer's subscription on the topic and on the retry-letter topic."""
    found = []
    for topic in (settings.topic, settings.retry_letter_topic):
        problem = subscription_problem(client, topic, settings.subscription)
        if problem:
            found.append(problem)
    return found
