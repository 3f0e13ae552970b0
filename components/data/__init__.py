"""Data handling for any preference task: file schemas, reading and writing data sets, expectations, preparing
training inputs, the Environment interface. May import config, io and the libraries; never the task or the tools."""
