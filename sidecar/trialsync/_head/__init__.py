"""The head-node service (seed scenario 3): the head's receiver and the workers' store."""
