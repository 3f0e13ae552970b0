"""People in the loop: the labelling rounds' pauses for ranked samples, the human judge's blinded pairs and labels.
May import components, the tools and flows.execution."""
