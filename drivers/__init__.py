"""Device drivers: Modbus charger racks and station I/O, the serial swap robot.

Drivers know devices and transports, nothing of the swap sequence or of MQTT.
"""
