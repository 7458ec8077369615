"""The jobs the bot enqueues, by dotted path (RQ imports them in the worker), and the
commands a request carries for them. Named here so the bot never imports the workers."""

STATUS_JOB = "workers.jobs.status"
REPLICATE_JOB = "workers.jobs.replicate_scope"
REMEDIATE_JOB = "workers.jobs.remediation"
PREFLIGHT_JOB = "workers.jobs.preflight"
EXECUTE_JOB = "workers.jobs.execute_change"
DOCTOR_JOB = "workers.jobs.doctor"
FAILURE_CALLBACK = "workers.jobs.report_failure"
WATCH_JOB = "workers.jobs.watch"  # the scheduled status check (hub/schedule.py enqueues it)
ONCALL_JOB = "workers.jobs.oncall"  # tells one on-call system about one incident key

CHANGE_COMMAND = "cms-execute"
REMEDIATE_COMMAND = "remediate"
REPLICATE_COMMAND = "/cms-replicate"
INCIDENT_COMMAND = "cms-incident"  # the request record of an incident's thread in the alert channel
WATCH_NOTICE_COMMAND = "cms-watch"  # the request record of the notice that the watch is not looking
