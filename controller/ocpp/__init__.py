"""OCPP 2.1: the station as a Charging Station towards an operator's CSMS (docs/ocpp.md)."""
