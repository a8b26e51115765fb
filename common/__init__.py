"""What the server and the gateway share: the one error taxonomy, addresses, and enum mappings.

The gateway can run standalone in front of any server of this API, so it must not import
`server`; what both sides need lives here, written once.
"""
