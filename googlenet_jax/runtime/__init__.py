"""What a run needs of its machines: checkpoints, hosts, stops, progress, workdirs.

Nothing here imports the research core (the models, the steps, the loop).
"""
