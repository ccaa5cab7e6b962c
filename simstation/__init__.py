"""The simulated station: a hardware-in-the-loop mock of racks, robot, vehicle and station I/O.

It speaks the real transports (a Modbus server, a pty), reuses the project's own codecs and
register specs in reverse, and is used by the tests, the demo and capacity studies. The
controller and the drivers never import it.
"""
