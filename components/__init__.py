"""Building blocks of the RLHF pipeline: plain Python, no orchestration inside."""
