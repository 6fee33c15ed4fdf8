"""Services: one module per capability. They validate, check, and submit jobs."""
