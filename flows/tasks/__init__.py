"""The flow's Prefect tasks: data (versions, checks, preparation), training, labelling rounds, decision (report, gate).
May import components, the tools, flows.execution and flows.labelling."""
