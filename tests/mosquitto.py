"""The test suite's name for the private broker (``agent.localbroker``)."""

from agent.localbroker import Broker, free_port, mosquitto_path

__all__ = ["Broker", "free_port", "mosquitto_path"]
