"""The node agent (`vmplane agent`): runs on a hypervisor host, joins a control plane with a
join token, heartbeats, and serves its local driver (qemu or sim) over authenticated HTTP to
the control plane's `remote` driver."""
