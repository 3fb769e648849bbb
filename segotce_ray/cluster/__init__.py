"""Ray start-up (embedded or a cluster's address), placement (resources, autoscaler node types), progress.

May import: seeds, io. Nothing of the pipeline stages.
"""
