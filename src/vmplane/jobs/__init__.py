"""The persistent job engine: a job has one task per resource; handlers run tasks."""
