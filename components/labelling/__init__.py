"""People labelling pairs: the offline page they answer on, the rules a labels file keeps, Label Studio and Argilla.
May import config, io and data; the flow's pauses for people are flows.labelling."""
