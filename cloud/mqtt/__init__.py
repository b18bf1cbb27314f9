"""The cloud's MQTT side (SPEC section 4): the uplink consumer and the command publisher.

``CloudMqttService`` (``cloud.mqtt.service``) runs both on one paho-mqtt 2 connection; ``b2l
cloud serve`` starts it when ``B2L_MQTT_URL`` is set and ``b2l cloud mqtt`` runs it alone.
Topics, QoS, acknowledgement after commit, dead letters and shared subscriptions are described
in docs/cloud-mqtt.md.
"""

from cloud.mqtt.service import CloudMqttService, uplink_subscriptions

__all__ = ["CloudMqttService", "uplink_subscriptions"]
