"""The swap robot: its framed serial protocol, the frame reassembler, the client link."""
