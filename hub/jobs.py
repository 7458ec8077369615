"""The jobs the bot enqueues, by dotted path (RQ imports them in the worker), and the
commands a request carries for them. Named here so the bot never imports the workers."""

STATUS_JOB = "workers.jobs.status"
REPLICATE_JOB = "workers.jobs.replicate_scope"
REMEDIATE_JOB = "workers.jobs.remediation"
PREFLIGHT_JOB = "workers.jobs.preflight"
EXECUTE_JOB = "workers.jobs.execute_change"
FAILURE_CALLBACK = "workers.jobs.report_failure"

CHANGE_COMMAND = "cms-execute"
REMEDIATE_COMMAND = "remediate"
REPLICATE_COMMAND = "/cms-replicate"
