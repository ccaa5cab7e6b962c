"""Devices: Modbus, the racks' and the PLC's register maps, the robot protocol and link."""
