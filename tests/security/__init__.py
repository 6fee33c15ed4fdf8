"""Attacks a hostile tenant (or a node, or a local user) would try, each against real servers:
every test asserts the refusal and that nothing was read, written or left behind."""
